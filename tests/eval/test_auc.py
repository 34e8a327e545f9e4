"""AUC: exact mode equals scikit-learn; bounded mode lies within its certified bound (docs/MATH.md §10.2–10.3)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.inputs import Task
from pipeline.metrics.auc import (ExactScoreCounts, bin_midpoints, grouped_auc, histogram_keys, num_bins,
                               tie_averaged_auc)
from pipeline.metrics.multitask import MultiTaskMetrics
from tests.eval.synthetic_logs import ctr_like


def _datasets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """name -> (pred, label, weight or None)."""
    rng = np.random.default_rng(0)
    n = 20_000
    random_pred = rng.random(n)
    tied_pred = rng.integers(0, 7, n) / 6.0  # 7 distinct scores: almost every pair is a tie
    imbalanced_label = np.zeros(n)
    imbalanced_label[rng.choice(n, 3, replace=False)] = 1.0  # 3 positives in 20k
    return {
        "random": (random_pred, (rng.random(n) < random_pred).astype(float), None),
        "heavily_tied": (tied_pred, (rng.random(n) < 0.3 + 0.4 * tied_pred).astype(float), None),
        "weighted": (random_pred, (rng.random(n) < random_pred).astype(float), rng.exponential(1.0, n)),
        "weighted_tied": (tied_pred, (rng.random(n) < tied_pred).astype(float), rng.integers(0, 5, n).astype(float)),
        "extremely_imbalanced": (rng.random(n), imbalanced_label, None),
    }


def _auc(pred: np.ndarray, label: np.ndarray, weight: np.ndarray | None, mode: str) -> dict:
    metrics = MultiTaskMetrics([Task("t")], auc_mode=mode)
    for chunk in np.array_split(np.arange(len(pred)), 3):  # several updates, so merging is exercised
        metrics.update(pred[chunk, None], label[chunk, None], None, None if weight is None else weight[chunk])
    return metrics.compute()["tasks"]["t"]


@pytest.mark.parametrize("name", list(_datasets()))
def test_exact_mode_equals_sklearn(name):
    pred, label, weight = _datasets()[name]
    result = _auc(pred, label, weight, "exact")
    assert result["auc_mode"] == "exact" and result["auc_error_bound"] == 0.0
    assert result["auc"] == pytest.approx(roc_auc_score(label, pred, sample_weight=weight), abs=1e-9)


@pytest.mark.parametrize("name", list(_datasets()))
def test_bounded_mode_within_its_bound_of_exact(name):
    pred, label, weight = _datasets()[name]
    exact = roc_auc_score(label, pred, sample_weight=weight)
    result = _auc(pred, label, weight, "bounded")
    assert abs(result["auc"] - exact) <= result["auc_error_bound"] + 1e-12


def test_bound_is_small_on_ctr_like_predictions():
    pred, label = ctr_like(np.random.default_rng(1), 200_000)
    assert 0.01 < label.mean() < 0.06
    result = _auc(pred, label, None, "bounded")
    assert result["auc_error_bound"] < 1e-4
    assert abs(result["auc"] - roc_auc_score(label, pred)) <= result["auc_error_bound"]


def test_coarse_histogram_error_is_within_bound_and_bound_can_be_large():
    """With 2 mantissa bits the bound is large, and it still covers the actual error."""
    pred, label = ctr_like(np.random.default_rng(2), 50_000)
    metrics = MultiTaskMetrics([Task("t")], mantissa_bits=2)
    metrics.update(pred[:, None], label[:, None])
    result = metrics.compute()["tasks"]["t"]
    assert result["auc_error_bound"] > 1e-3
    assert abs(result["auc"] - roc_auc_score(label, pred)) <= result["auc_error_bound"]


def test_half_precision_scores_get_the_exact_auc_in_bounded_mode():
    """Each float16 value in [0, 1] has its own bin at k = 10, so the histogram AUC is the exact one."""
    rng = np.random.default_rng(3)
    pred = rng.random(30_000).astype(np.float16).astype(np.float64)
    label = (rng.random(30_000) < pred).astype(float)
    result = _auc(pred, label, None, "bounded")
    assert result["auc"] == pytest.approx(roc_auc_score(label, pred), abs=1e-12)


def test_histogram_keys_are_monotone_and_cover_zero_to_one():
    scores = np.sort(np.concatenate([[0.0, -0.0, 1e-45, 1e-30, 0.5, 1.0], np.random.default_rng(4).random(10_000)]))
    keys = histogram_keys(scores, 10)
    assert num_bins(10) == 130_049
    assert np.all(np.diff(keys) >= 0) and keys.min() == 0 and keys.max() == num_bins(10) - 1
    mid = bin_midpoints(10)
    assert np.all(np.diff(mid) > 0) and mid[-1] == 1.0
    inside = (scores > 1e-30) & (scores < 1)  # relative width 2^-10 away from subnormals
    assert np.all(np.abs(mid[keys[inside]] / scores[inside] - 1) <= 2.0 ** -10)


@pytest.mark.parametrize("label_value", [0.0, 1.0])
def test_single_class_gives_null_with_reason(label_value):
    pred = np.random.default_rng(5).random(100)
    for mode in ("bounded", "exact"):
        result = _auc(pred, np.full(100, label_value), None, mode)
        assert result["auc"] is None and result["auc_error_bound"] is None
        assert ("POS = 0" if label_value == 0 else "NEG = 0") in result["null_reasons"]["auc"]


def test_exact_counts_merge_by_key():
    a, b = ExactScoreCounts(), ExactScoreCounts()
    a.add(np.array([0.5, 0.2, 0.5]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0]))
    b.add(np.array([0.2, 0.9, -0.0]), np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 2.0]))
    a.merge_(b)
    scores, pos, neg = a.arrays()
    assert scores.tolist() == [0.0, 0.2, 0.5, 0.9]
    assert pos.tolist() == [0.0, 1.0, 1.0, 1.0] and neg.tolist() == [2.0, 1.0, 1.0, 0.0]


def test_tie_averaged_auc_hand_computed():
    # groups ascending: (pos, neg) = (0, 1), (1, 1), (1, 0): pairs P·N = 4
    # pos in g1 beats 1 neg below + ½ tie; pos in g2 beats 2 neg -> (1.5 + 2) / 4
    value = tie_averaged_auc(np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]))
    assert value.auc == pytest.approx(3.5 / 4) and value.error_bound == pytest.approx(0.5 / 4)


def test_grouped_auc_equals_per_group_sklearn():
    rng = np.random.default_rng(6)
    groups = np.sort(rng.integers(0, 40, 3000))
    scores = rng.integers(0, 20, 3000) / 19.0
    label = (rng.random(3000) < scores).astype(float)
    weight = rng.random(3000)
    auc, defined, mass = grouped_auc(groups, scores, weight * label, weight * (1 - label), 40)
    for g in range(40):
        rows = groups == g
        assert mass[g] == pytest.approx(weight[rows].sum())
        assert defined[g] == (0 < label[rows].sum() < rows.sum())
        if defined[g]:
            expected = roc_auc_score(label[rows], scores[rows], sample_weight=weight[rows])
            assert auc[g] == pytest.approx(expected, abs=1e-12)
