"""Per-task metric states (docs/MATH.md §10): every state is a sum, so states merge by addition.

`BinaryTaskState` holds NE / log loss / calibration sums and the AUC state (histogram or exact);
`RegressionTaskState` MSE / MAE sums. Both take one task's already selected rows (mask 1,
weight > 0) from `MultiTaskMetrics`; `fixed_arrays()` exposes the fixed-shape sums for all-reduce.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from pipeline.metrics.auc import ExactScoreCounts, histogram_keys, num_bins, tie_averaged_auc
from pipeline.metrics.numerics import CompensatedSum, check_binary, check_finite, ratio, weighted_sum

AucMode = Literal["bounded", "exact"]
ETA = 1e-12  # prediction clamp of the log loss, as torchrec.metrics (docs/MATH.md §10.1)
_HIST_FOLD_ROWS = 1 << 20  # [project] rows summed plainly per histogram bin before a compensated fold


def _entropy_rate(rate: float) -> float:
    """h(q) = −q log q − (1−q) log(1−q), natural log (the base cancels in NE)."""
    return -rate * math.log(rate) - (1 - rate) * math.log(1 - rate)


class BinaryTaskState:
    """Sums of one binary task: counts (int64), W/POS/NEG/CE/PRED, and the AUC state.

    Labels are y ∈ [0, 1]; a soft label adds w·y positive and w·(1−y) negative mass (docs/MATH.md §10)
    and is counted in `soft_label_count` so that accidental probabilities-as-labels are visible.
    """

    kind = "binary"
    _SUMS = ("W", "POS", "NEG", "CE", "PRED")

    def __init__(self, name: str, auc_mode: AucMode, mantissa_bits: int):
        self.name, self.auc_mode, self.mantissa_bits = name, auc_mode, mantissa_bits
        self.counts = np.zeros(2, dtype=np.int64)  # rows, soft-labelled rows
        self.sums = CompensatedSum(len(self._SUMS))
        self.hist_pos = CompensatedSum(num_bins(mantissa_bits), _HIST_FOLD_ROWS)  # pos_b = Σ_{i∈b} w·y
        self.hist_neg = CompensatedSum(num_bins(mantissa_bits), _HIST_FOLD_ROWS)  # neg_b = Σ_{i∈b} w·(1−y)
        self.exact = ExactScoreCounts() if auc_mode == "exact" else None

    def check(self, pred: np.ndarray, label: np.ndarray) -> None:
        check_binary(self.name, pred, label)

    def add(self, pred: np.ndarray, label: np.ndarray, weight: np.ndarray | None) -> None:
        """pred [n] in [0, 1], label [n] float64 in [0, 1] (both checked), weight [n] float64 or None (1)."""
        n = len(pred)
        if n == 0:
            return
        not_label = 1.0 - label
        soft = int(np.count_nonzero(label * not_label))  # y(1−y) ≠ 0 exactly when y ∉ {0, 1}, for y ∈ [0, 1]
        pos = label if weight is None else weight * label
        neg = not_label if weight is None else weight * not_label
        clamped = np.clip(pred, ETA, 1.0 - ETA, dtype=np.float64)
        if soft:
            log_likelihood = label * np.log(clamped) + not_label * np.log(1.0 - clamped)
        else:  # hard labels: one log of the observed class's probability |1 − y − p| (same value, half the cost)
            log_likelihood = np.abs(np.subtract(not_label, clamped, out=clamped), out=clamped)
            np.log(log_likelihood, out=log_likelihood)
        self.counts += (n, soft)
        self.sums.add([n if weight is None else weight.sum(), pos.sum(), neg.sum(),
                       -weighted_sum(log_likelihood, weight), weighted_sum(pred, weight)])
        keys = histogram_keys(pred, self.mantissa_bits).astype(np.intp)
        bins = num_bins(self.mantissa_bits)
        self.hist_pos.add(np.bincount(keys, weights=pos, minlength=bins), n)
        self.hist_neg.add(np.bincount(keys, weights=neg, minlength=bins), n)
        if self.exact is not None:
            self.exact.add(pred.astype(np.float64), pos, neg)

    def merge_(self, other: "BinaryTaskState") -> None:
        self.counts += other.counts
        for mine, theirs in ((self.sums, other.sums), (self.hist_pos, other.hist_pos), (self.hist_neg, other.hist_neg)):
            mine.merge_(theirs)
        if self.exact is not None:
            self.exact.merge_(other.exact)

    def fixed_arrays(self) -> dict[str, np.ndarray]:
        """The fixed-shape states (live references, compensation folded in): summed by all-reduce."""
        arrays = {"counts": self.counts}
        for label, acc in (("sums", self.sums), ("hist_pos", self.hist_pos), ("hist_neg", self.hist_neg)):
            acc.fold()
            arrays[label], arrays[f"{label}_comp"] = acc.total, acc.comp
        return arrays

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(pos_b, neg_b) [num_bins] float64 each, bins in ascending score order."""
        return self.hist_pos.value(), self.hist_neg.value()

    def compute(self, baseline_rate: float | None) -> dict[str, Any]:
        total, pos, neg, ce, pred = self.sums.value()
        out: dict[str, Any] = {"kind": self.kind, "count": int(self.counts[0]), "weighted_count": float(total),
                               "soft_label_count": int(self.counts[1])}
        reasons: dict[str, str] = {}
        no_rows = "no rows with mask 1 and weight > 0 (W = 0)"

        def put(key: str, value: float | None, reason: str) -> None:
            out[key] = value
            if value is None:
                reasons[key] = reason

        put("positive_rate", ratio(pos, total), no_rows)
        put("mean_pred", ratio(pred, total), no_rows)
        put("calibration", ratio(pred, pos), no_rows if total <= 0 else "no positive mass (POS = 0)")
        put("logloss", ratio(ce, total), no_rows)
        if total <= 0 or pos <= 0 or neg <= 0:
            empty_class = "positive mass (POS = 0)" if pos <= 0 else "negative mass (NEG = 0)"
            put("ne", None, no_rows if total <= 0 else f"no {empty_class}: the label entropy H(p̄) is 0")
        else:  # H(p̄) = −POS·log p̄ − NEG·log(1 − p̄), with 1 − p̄ = NEG/W
            put("ne", float(ce / (-pos * math.log(pos / total) - neg * math.log(neg / total))), "")
        if baseline_rate is not None:
            put("ne_train_prior", ratio(ce, total * _entropy_rate(baseline_rate)), no_rows)
        auc = self.exact.auc() if self.exact is not None else tie_averaged_auc(*self.histogram())
        put("auc", auc.auc, no_rows if total <= 0 else auc.null_reason or "")
        put("auc_error_bound", auc.error_bound, reasons.get("auc", ""))
        out["auc_mode"] = self.auc_mode
        out["null_reasons"] = reasons
        return out


class RegressionTaskState:
    """Sums of one regression task: W, Σw·ŷ, Σw·y, Σw(ŷ−y)², Σw|ŷ−y|."""

    kind = "regression"
    _SUMS = ("W", "PRED", "LABEL", "SE", "AE")

    def __init__(self, name: str):
        self.name = name
        self.counts = np.zeros(1, dtype=np.int64)
        self.sums = CompensatedSum(len(self._SUMS))

    def check(self, pred: np.ndarray, label: np.ndarray) -> None:
        check_finite(self.name, "pred", pred)
        check_finite(self.name, "label", label)

    def add(self, pred: np.ndarray, label: np.ndarray, weight: np.ndarray | None) -> None:
        """pred, label [n] finite (checked); weight [n] float64 or None (1)."""
        if len(pred) == 0:
            return
        p = pred.astype(np.float64, copy=False)
        error = p - label
        self.counts += len(p)
        self.sums.add([len(p) if weight is None else weight.sum(), weighted_sum(p, weight),
                       weighted_sum(label, weight), weighted_sum(error * error, weight),
                       weighted_sum(np.abs(error), weight)])

    def merge_(self, other: "RegressionTaskState") -> None:
        self.counts += other.counts
        self.sums.merge_(other.sums)

    def fixed_arrays(self) -> dict[str, np.ndarray]:
        self.sums.fold()
        return {"counts": self.counts, "sums": self.sums.total, "sums_comp": self.sums.comp}

    def compute(self, baseline_rate: float | None = None) -> dict[str, Any]:
        total, pred, label, se, ae = self.sums.value()
        out: dict[str, Any] = {"kind": self.kind, "count": int(self.counts[0]), "weighted_count": float(total)}
        for key, numerator in (("mean_pred", pred), ("mean_label", label), ("mse", se), ("mae", ae)):
            out[key] = ratio(numerator, total)
        out["null_reasons"] = {} if total > 0 else {
            key: "no rows with mask 1 and weight > 0 (W = 0)" for key in ("mean_pred", "mean_label", "mse", "mae")}
        return out


TaskState = BinaryTaskState | RegressionTaskState
