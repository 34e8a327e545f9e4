"""Metric states (NE, calibration, AUC, MSE): sums that merge by all-reduce, so every report is
identical for any world size. Pure numpy plus torch collectives; no I/O."""
