"""Metric states (NE, calibration, AUC, MSE): sums that merge by all-reduce, so every report is
identical for any world size. Pure numpy (torch only for the collectives across ranks); no I/O.

- numerics.py    compensated sums, input checks, one update's inputs (MetricBatch), MetricInputError
- auc.py         histogram and exact AUC, ROC points, per-group AUC
- task_state.py  BinaryTaskState, RegressionTaskState: the sums of one task
- multitask.py   MultiTaskMetrics: every task of a model, fed batch by batch
- grouped.py     GroupedAucMetrics (GAUC over a log grouped by user)
- segmented.py   SegmentedMetrics (MultiTaskMetrics per value of a segment column)

Modules are imported directly (nothing is re-exported here).
"""
