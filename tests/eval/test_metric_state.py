"""MultiTaskMetrics: NE / log loss / calibration definitions, masks, weights, merging, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from models.inputs import Task
from pipeline.metrics.grouped import GroupedAucMetrics
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.metrics.numerics import MetricInputError
from pipeline.metrics.segmented import SegmentedMetrics
from tests.eval.synthetic_logs import ctr_like

TASKS = [Task("click"), Task("buy"), Task("dwell", kind="regression")]


def _batch(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, ...]:
    """preds, labels, masks [rows, 3] and weights [rows] for TASKS."""
    click, click_label = ctr_like(rng, rows, base_logit=-2.0)
    buy, buy_label = ctr_like(rng, rows, base_logit=-1.0)
    dwell = rng.normal(3.0, 1.0, rows)
    preds = np.stack([click, buy, dwell + rng.normal(0, 0.5, rows)], axis=1)
    labels = np.stack([click_label, buy_label, dwell], axis=1)
    masks = np.stack([np.ones(rows), rng.random(rows) < 0.5, rng.random(rows) < 0.7], axis=1).astype(np.float32)
    weights = rng.integers(0, 3, rows).astype(np.float64)
    return preds, labels, masks, weights


def test_binary_metrics_match_definitions_and_sklearn():
    rng = np.random.default_rng(0)
    preds, labels, masks, weights = _batch(rng, 30_000)
    metrics = MultiTaskMetrics(TASKS, "exact", baseline_rates={"buy": 0.2})
    metrics.update(preds, labels, masks, weights)
    report = metrics.compute()
    assert report["rows"] == int((weights > 0).sum())
    for t, name in [(0, "click"), (1, "buy")]:
        rows = (masks[:, t] == 1) & (weights > 0)
        p, y, w = preds[rows, t], labels[rows, t], weights[rows]
        got = report["tasks"][name]
        assert got["count"] == rows.sum() and got["weighted_count"] == pytest.approx(w.sum())
        assert got["logloss"] == pytest.approx(log_loss(y, p, sample_weight=w), abs=1e-9)
        assert got["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-9)
        rate = np.average(y, weights=w)
        entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
        assert got["positive_rate"] == pytest.approx(rate, rel=1e-12)
        assert got["ne"] == pytest.approx(got["logloss"] / entropy, rel=1e-12)
        assert got["calibration"] == pytest.approx(np.average(p, weights=w) / rate, rel=1e-12)
        assert got["mean_pred"] == pytest.approx(np.average(p, weights=w), rel=1e-12)
        assert got["null_reasons"] == {}
    buy = report["tasks"]["buy"]
    prior = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert buy["ne_train_prior"] == pytest.approx(buy["logloss"] / prior, rel=1e-12)
    assert "ne_train_prior" not in report["tasks"]["click"]


def test_regression_mse_mae():
    rng = np.random.default_rng(1)
    preds, labels, masks, weights = _batch(rng, 5_000)
    metrics = MultiTaskMetrics(TASKS)
    metrics.update(*(torch.from_numpy(x) for x in (preds, labels, masks, weights)))  # torch inputs
    got = metrics.compute()["tasks"]["dwell"]
    rows = (masks[:, 2] == 1) & (weights > 0)
    err = preds[rows, 2] - labels[rows, 2]
    assert got["kind"] == "regression" and "auc" not in got
    assert got["mse"] == pytest.approx(np.average(err ** 2, weights=weights[rows]), rel=1e-12)
    assert got["mae"] == pytest.approx(np.average(np.abs(err), weights=weights[rows]), rel=1e-12)


def test_log_loss_clamps_at_eta():
    """p = 0 with y = 1 costs −log(1e-12), not infinity (torchrec's convention)."""
    metrics = MultiTaskMetrics([Task("t")])
    metrics.update(np.array([[0.0], [1.0]]), np.array([[1.0], [1.0]]))
    assert metrics.compute()["tasks"]["t"]["logloss"] == pytest.approx(-math.log(1e-12) / 2, rel=1e-9)


def test_masked_and_zero_weight_rows_change_nothing():
    rng = np.random.default_rng(2)
    preds, labels, masks, weights = _batch(rng, 4_000)
    excluded = (masks == 0) | (weights[:, None] == 0)

    def report(p, y):
        for mode in ("bounded", "exact"):
            metrics = MultiTaskMetrics(TASKS, mode)
            metrics.update(p, y, masks, weights)
            yield metrics.compute()

    changed_labels = np.where(excluded, np.nan, labels)  # even NaN labels are ignored on excluded rows
    changed_preds = np.where(excluded, 7.0, preds)  # and out-of-range predictions
    assert list(report(preds, labels)) == list(report(changed_preds, changed_labels))
    flipped = np.where(excluded, 1.0 - labels, labels)
    assert list(report(preds, labels)) == list(report(preds, flipped))


def test_all_masked_task_gives_nulls_with_reasons():
    metrics = MultiTaskMetrics(TASKS)
    preds, labels, masks, weights = _batch(np.random.default_rng(3), 100)
    masks[:, 1] = 0
    metrics.update(preds, labels, masks, weights)
    buy = metrics.compute()["tasks"]["buy"]
    assert buy["count"] == 0
    for key in ("positive_rate", "mean_pred", "calibration", "logloss", "ne", "auc", "auc_error_bound"):
        assert buy[key] is None and "W = 0" in buy["null_reasons"][key]


def test_no_positives_gives_null_ne_auc_calibration():
    metrics = MultiTaskMetrics([Task("t")])
    metrics.update(np.random.default_rng(4).random((50, 1)), np.zeros((50, 1)))
    got = metrics.compute()["tasks"]["t"]
    assert got["logloss"] is not None and got["positive_rate"] == 0.0
    assert got["ne"] is None and got["auc"] is None and got["calibration"] is None
    assert all("POS = 0" in got["null_reasons"][k] for k in ("ne", "auc", "calibration"))


def test_soft_labels_are_allowed_and_counted():
    metrics = MultiTaskMetrics([Task("t")], "exact")
    p = np.array([[0.2], [0.7], [0.9]])
    y = np.array([[0.0], [0.5], [1.0]])
    metrics.update(p, y)
    got = metrics.compute()["tasks"]["t"]
    assert got["soft_label_count"] == 1
    expected_ce = -(math.log(0.8) + 0.5 * math.log(0.7) + 0.5 * math.log(0.3) + math.log(0.9)) / 3
    assert got["logloss"] == pytest.approx(expected_ce, rel=1e-12)
    # pos mass: 0.5 at 0.7, 1 at 0.9; neg mass: 1 at 0.2, 0.5 at 0.7 -> (0.5·(1 + ½·0.5) + 1·1.5) / (1.5·1.5)
    assert got["auc"] == pytest.approx((0.5 * 1.25 + 1.5) / 2.25, rel=1e-12)


def test_merge_and_batch_order_give_identical_reports():
    rng = np.random.default_rng(5)
    batches = [_batch(rng, n) for n in (3000, 10, 777, 5000, 1)]
    for mode in ("bounded", "exact"):
        whole = MultiTaskMetrics(TASKS, mode)
        whole.update(*(np.concatenate(parts) for parts in zip(*batches)))
        shuffled = MultiTaskMetrics(TASKS, mode)
        halves = MultiTaskMetrics(TASKS, mode), MultiTaskMetrics(TASKS, mode)
        for i in rng.permutation(len(batches)):
            shuffled.update(*batches[i])
            halves[i % 2].update(*batches[i])
        halves[1].merge_(halves[0])
        for other in (shuffled, halves[1]):
            _assert_reports_close(whole.compute(), other.compute(), 1e-12)


def _assert_reports_close(a, b, tol):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_reports_close(a[k], b[k], tol)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=tol, abs=tol)
    else:
        assert a == b


def test_state_dict_round_trip():
    rng = np.random.default_rng(6)
    for mode in ("bounded", "exact"):
        metrics = MultiTaskMetrics(TASKS, mode)
        metrics.update(*_batch(rng, 2000))
        restored = MultiTaskMetrics(TASKS, mode)
        restored.load_state_dict(metrics.state_dict())
        assert restored.compute() == metrics.compute()
        assert all(isinstance(v, torch.Tensor) for v in metrics.state_dict().values())


@pytest.mark.parametrize("column, value, field", [(0, np.nan, "pred"), (0, 1.5, "pred"), (0, -0.1, "pred"),
                                                  (1, np.nan, "pred"), (2, np.inf, "pred")])
def test_bad_predictions_are_errors_naming_task(column, value, field):
    preds, labels, _, _ = _batch(np.random.default_rng(7), 100)
    preds[17, column] = value
    metrics = MultiTaskMetrics(TASKS)
    with pytest.raises(MetricInputError) as e:
        metrics.update(preds, labels)
    assert e.value.task == TASKS[column].name and e.value.field == field and "1 of 100" in str(e.value)
    assert metrics.compute() == MultiTaskMetrics(TASKS).compute()  # all or nothing: no task took the batch


@pytest.mark.parametrize("value", [2.0, -1.0, np.nan])
def test_bad_binary_labels_are_errors(value):
    preds, labels, _, _ = _batch(np.random.default_rng(8), 100)
    labels[3, 1] = value
    with pytest.raises(MetricInputError, match="'buy' label"):
        MultiTaskMetrics(TASKS).update(preds, labels)


@pytest.mark.parametrize("masks, weights, match", [
    (np.full((10, 3), 0.5), None, "mask"),
    (None, -np.ones(10), "weight: 10 negative"),
    (None, np.full(10, np.nan), "weight"),
    (np.ones((10, 2)), None, r"masks must be \[10, 3\]"),
])
def test_bad_masks_weights_and_shapes(masks, weights, match):
    preds, labels, _, _ = _batch(np.random.default_rng(9), 10)
    with pytest.raises(ValueError, match=match):
        MultiTaskMetrics(TASKS).update(preds, labels, masks, weights)


def test_bad_configuration():
    with pytest.raises(ValueError, match="not binary"):
        MultiTaskMetrics(TASKS, baseline_rates={"dwell": 0.1})
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        MultiTaskMetrics(TASKS, baseline_rates={"click": 1.0})
    with pytest.raises(ValueError, match="auc_mode"):
        MultiTaskMetrics(TASKS, "approx")


def test_gauc_equals_weighted_mean_of_per_user_auc_and_rejects_ungrouped_logs():
    rng = np.random.default_rng(10)
    rows = 3000
    users = np.sort(rng.integers(0, 150, rows))
    preds, labels, masks, weights = _batch(rng, rows)
    gauc = GroupedAucMetrics(["click", "buy"])
    for chunk in np.array_split(np.arange(rows), 7):  # users straddle update boundaries
        gauc.update(users[chunk], preds[chunk, :2], labels[chunk, :2], masks[chunk, :2], weights[chunk])
    got = gauc.compute()
    for t, name in enumerate(["click", "buy"]):
        num = den = 0.0
        defined = 0
        for u in np.unique(users):
            rows_u = (users == u) & (masks[:, t] == 1) & (weights > 0)
            y, w = labels[rows_u, t], weights[rows_u]
            if (w * y).sum() > 0 and (w * (1 - y)).sum() > 0:
                num += w.sum() * roc_auc_score(y, preds[rows_u, t], sample_weight=w)
                den += w.sum()
                defined += 1
        assert got[name]["gauc"] == pytest.approx(num / den, rel=1e-12)
        assert got[name]["gauc_users"] == defined
    with pytest.raises(MetricInputError, match="not grouped by user: user 1 "):
        GroupedAucMetrics(["click"]).update(np.array([1, 1, 2, 1]), np.full((4, 1), 0.5), np.ones((4, 1)))


def test_segments_equal_metrics_of_the_segment_rows():
    rng = np.random.default_rng(11)
    preds, labels, masks, weights = _batch(rng, 2000)
    codes = rng.integers(0, 3, 2000)
    names = ["de", "fr", "us"]
    segmented = SegmentedMetrics(TASKS, max_segments=3)
    segmented.update(codes, names, preds, labels, masks, weights)
    got = segmented.compute()
    assert list(got) == names
    for code, name in enumerate(names):
        alone = MultiTaskMetrics(TASKS, mantissa_bits=segmented.mantissa_bits)
        rows = codes == code
        alone.update(preds[rows], labels[rows], masks[rows], weights[rows])
        assert got[name] == alone.compute()
    with pytest.raises(ValueError, match="more than 3 segment values"):
        segmented.update(np.array([0]), ["it"], preds[:1], labels[:1])
