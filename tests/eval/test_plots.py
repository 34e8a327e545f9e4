"""Reliability groups and ROC points from the histogram agree with the raw predictions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from models.inputs import Task
from pipeline.metrics.auc import roc_points
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.eval.plots import reliability_groups
from tests.eval.synthetic_logs import ctr_like


def _histogram(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    metrics = MultiTaskMetrics([Task("t")])
    metrics.update(pred[:, None], label[:, None])
    return metrics.histograms()["t"]


def test_reliability_groups_match_the_rows_of_each_group():
    pred, label = ctr_like(np.random.default_rng(0), 50_000)
    pos, neg = _histogram(pred, label)
    mean_pred, rate = reliability_groups(pos, neg, 10, groups=10)
    assert len(mean_pred) == 10 and np.all(np.diff(mean_pred) > 0)
    # Equal-mass groups: the decile of sorted predictions, up to rows of a boundary bin.
    order = np.argsort(pred)
    for g, rows in enumerate(np.array_split(order, 10)):
        assert mean_pred[g] == pytest.approx(pred[rows].mean(), rel=0.02)
    assert np.mean(rate) == pytest.approx(label.mean(), rel=0.02)


def test_roc_points_equal_sklearn_at_bin_thresholds():
    """With float16 scores every distinct score is one bin, so the ROC is sklearn's."""
    rng = np.random.default_rng(1)
    pred = rng.random(5000).astype(np.float16).astype(np.float64)
    label = (rng.random(5000) < pred).astype(float)
    pos, neg = _histogram(pred, label)
    used = (pos + neg) > 0
    fpr, tpr = roc_points(pos[used], neg[used])
    sk_fpr, sk_tpr, _ = roc_curve(label, pred, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
