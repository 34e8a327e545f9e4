"""Offline evaluation: mergeable per-task metric states, histogram/exact AUC, reports and plots.

`pipeline.metrics.multitask.MultiTaskMetrics` is the accumulator the evaluator and `mtrec metrics` feed;
definitions are docs/MATH.md §10, choices and policies docs/METRICS.md.
"""
