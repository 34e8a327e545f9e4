"""What every metric state shares: compensated float64 sums, input checks and one update's inputs.

Pure numpy. Torch tensors are accepted as inputs, but torch is never imported here: a tensor can
only exist once the caller has imported torch (see `to_numpy`).
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np


class MetricInputError(ValueError):
    """Bad values given to an update. `task` and `field` ("pred", "label", "mask", "weight", "user")
    let the caller name the offending column; the message says what is wrong and how often."""

    def __init__(self, task: str | None, field: str, message: str):
        super().__init__(f"task {task!r} {field}: {message}" if task else f"{field}: {message}")
        self.task, self.field, self.detail = task, field, message


class CompensatedSum:
    """float64 sum of same-shaped arrays whose error does not grow with the number of additions.

    Additions go into a plain partial sum; after `fold_rows` rows (every addition when 0) the partial
    is folded into (total, comp) with Neumaier's compensated step. total + comp is the value.
    `total` and `comp` are updated in place, so references to them stay valid (all-reduce uses them).
    """

    def __init__(self, shape: int | tuple[int, ...], fold_rows: int = 0):
        self.total = np.zeros(shape, dtype=np.float64)
        self.comp = np.zeros(shape, dtype=np.float64)
        self._partial = np.zeros(shape, dtype=np.float64) if fold_rows else None
        self._fold_rows = fold_rows
        self._rows = 0

    def add(self, values: np.ndarray | Sequence[float], rows: int = 0) -> None:
        if self._partial is None:
            self._fold_in(np.asarray(values, dtype=np.float64))
            return
        self._partial += values
        self._rows += max(rows, 1)
        if self._rows >= self._fold_rows:
            self.fold()

    def fold(self) -> None:
        if self._partial is not None and self._rows:
            self._fold_in(self._partial)
            self._partial[...] = 0.0
            self._rows = 0

    def value(self) -> np.ndarray:
        self.fold()
        return self.total + self.comp

    def merge_(self, other: "CompensatedSum") -> None:
        self.fold()
        other.fold()
        self._fold_in(other.total)
        self.comp += other.comp

    def _fold_in(self, values: np.ndarray) -> None:
        new_total = self.total + values
        self.comp += np.where(np.abs(self.total) >= np.abs(values),
                              (self.total - new_total) + values, (values - new_total) + self.total)
        self.total[...] = new_total


# ----------------------------------------------------------------------------- input checks


def check_range(task: str | None, field: str, values: np.ndarray, low: float, high: float) -> None:
    """MetricInputError unless every value is in [low, high] (NaN fails)."""
    if len(values) == 0 or (low <= values.min() and values.max() <= high):  # min/max propagate NaN
        return
    bad = ~((values >= low) & (values <= high))
    raise MetricInputError(task, field, f"{int(bad.sum())} of {len(values)} values are NaN/null or outside "
                                        f"[{low:g}, {high:g}] (first: {float(values[np.argmax(bad)])})")


def check_finite(task: str | None, field: str, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        raise MetricInputError(task, field, f"{int((~finite).sum())} of {len(values)} values are NaN/null or "
                                            f"infinite (first: {float(values[np.argmin(finite)])})")


def check_binary(task: str, pred: np.ndarray, label: np.ndarray) -> None:
    check_range(task, "pred", pred, 0.0, 1.0)
    check_range(task, "label", label, 0.0, 1.0)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array, sequence or torch tensor (bfloat16 becomes float32)."""
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never import it for this check
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


class MetricBatch:
    """One update's inputs as numpy, validated for shape, with per-task row selection.

    preds, labels, masks: [B, T] (column-major so a task's column is contiguous); weights: [B] float64
    or None (all 1). Rows with weight 0 or mask 0 are excluded from a task's rows.
    """

    def __init__(self, preds: Any, labels: Any, masks: Any, weights: Any, num_tasks: int):
        self.preds = np.asfortranarray(to_numpy(preds))
        self.labels = np.asfortranarray(to_numpy(labels))
        shape = self.preds.shape
        if self.preds.ndim != 2 or shape[1] != num_tasks:
            raise ValueError(f"preds must be [B, {num_tasks}], got {list(shape)}")
        if self.labels.shape != shape:
            raise ValueError(f"labels must be {list(shape)} like preds, got {list(self.labels.shape)}")
        self.masks = None if masks is None else np.asfortranarray(to_numpy(masks))
        if self.masks is not None and self.masks.shape != shape:
            raise ValueError(f"masks must be {list(shape)} like preds, got {list(self.masks.shape)}")
        self.weights = None
        self.live = None  # [B] bool rows with weight > 0, None when all are
        if weights is not None:
            w = to_numpy(weights).astype(np.float64, copy=False)
            if w.shape != (shape[0],):
                raise ValueError(f"weights must be [{shape[0]}], got {list(w.shape)}")
            check_finite(None, "weight", w)
            if len(w) and w.min() < 0:
                raise MetricInputError(None, "weight", f"{int((w < 0).sum())} negative values "
                                                       f"(first: {float(w[np.argmax(w < 0)])})")
            self.weights = w
            self.live = w > 0

    @property
    def num_rows(self) -> int:
        return self.preds.shape[0]

    def live_rows(self) -> int:
        return self.num_rows if self.live is None else int(np.count_nonzero(self.live))

    def task_rows(self, task: int, name: str) -> np.ndarray | None:
        """[B] bool rows of task `task` (mask 1 and weight > 0), or None when all rows are."""
        include = self.live
        if self.masks is not None:
            mask = self.masks[:, task]
            if not np.all((mask == 0) | (mask == 1)):
                bad = ~((mask == 0) | (mask == 1))
                raise MetricInputError(name, "mask", f"{int(bad.sum())} values are not 0/1 "
                                                     f"(first: {float(mask[np.argmax(bad)])})")
            include = mask != 0 if include is None else include & (mask != 0)
        return None if include is None or include.all() else include

    def task_columns(self, task: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(pred [n], label [n] float64, weight [n] or None) of task `task` restricted to `rows`."""
        pred, label, weight = self.preds[:, task], self.labels[:, task], self.weights
        if rows is not None:
            pred, label = pred[rows], label[rows]
            weight = None if weight is None else weight[rows]
        return pred, label.astype(np.float64, copy=False), weight


# ----------------------------------------------------------------------------- sums and ratios


def weighted_sum(values: np.ndarray, weight: np.ndarray | None) -> float:
    """Σ w·x in float64 (x may be float32). einsum, not np.dot: BLAS threads contend with torch's
    and with Arrow's thread pools on small machines and made the dot 10× slower [project]."""
    if weight is None:
        return float(values.sum(dtype=np.float64))
    return float(np.einsum("i,i->", weight, values, dtype=np.float64, casting="safe"))


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None (the metric is undefined) when the denominator is not positive."""
    return float(numerator / denominator) if denominator > 0 else None
