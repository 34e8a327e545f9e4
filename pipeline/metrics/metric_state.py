"""Mergeable per-task metric accumulators (docs/MATH.md §10): every state is a sum.

`MultiTaskMetrics` is what the evaluator and `mtrec metrics` feed batch by batch; `merge_` and
`all_reduce_` add states, so a report does not depend on how rows were split into batches, files
or ranks (up to float64 rounding, kept ~1e-16 relative by compensated summation; see
docs/METRICS.md). `GroupedAucMetrics` (GAUC) and `SegmentedMetrics` (per-segment breakdown) are
optional extras with the same update / merge / all-reduce / compute shape.
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

from models.inputs import Task
from pipeline.metrics.auc import (DEFAULT_MANTISSA_BITS, ExactScoreCounts, grouped_auc, histogram_keys, num_bins,
                               tie_averaged_auc)

AucMode = Literal["bounded", "exact"]
ETA = 1e-12  # prediction clamp of the log loss, as torchrec.metrics (docs/MATH.md §10.1)
_HIST_FOLD_ROWS = 1 << 20  # [project] rows summed plainly per histogram bin before a compensated fold
SEGMENT_MANTISSA_BITS = 7  # [project] 16,257 bins per task and segment: keeps many segments affordable


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


def _check_range(task: str, field: str, values: np.ndarray, low: float, high: float) -> None:
    """MetricInputError unless every value is in [low, high] (NaN fails)."""
    if len(values) == 0 or (low <= values.min() and values.max() <= high):  # min/max propagate NaN
        return
    bad = ~((values >= low) & (values <= high))
    raise MetricInputError(task, field, f"{int(bad.sum())} of {len(values)} values are NaN/null or outside "
                                        f"[{low:g}, {high:g}] (first: {float(values[np.argmax(bad)])})")


def _check_finite(task: str, field: str, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        raise MetricInputError(task, field, f"{int((~finite).sum())} of {len(values)} values are NaN/null or "
                                            f"infinite (first: {float(values[np.argmin(finite)])})")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


class _Batch:
    """One update's inputs as numpy, validated for shape, with per-task row selection.

    preds, labels, masks: [B, T] (column-major so a task's column is contiguous); weights: [B] float64
    or None (all 1). Rows with weight 0 or mask 0 are excluded from a task's rows.
    """

    def __init__(self, preds: Any, labels: Any, masks: Any, weights: Any, num_tasks: int):
        self.preds = np.asfortranarray(_to_numpy(preds))
        self.labels = np.asfortranarray(_to_numpy(labels))
        shape = self.preds.shape
        if self.preds.ndim != 2 or shape[1] != num_tasks:
            raise ValueError(f"preds must be [B, {num_tasks}], got {list(shape)}")
        if self.labels.shape != shape:
            raise ValueError(f"labels must be {list(shape)} like preds, got {list(self.labels.shape)}")
        self.masks = None if masks is None else np.asfortranarray(_to_numpy(masks))
        if self.masks is not None and self.masks.shape != shape:
            raise ValueError(f"masks must be {list(shape)} like preds, got {list(self.masks.shape)}")
        self.weights = None
        self.live = None  # [B] bool rows with weight > 0, None when all are
        if weights is not None:
            w = _to_numpy(weights).astype(np.float64, copy=False)
            if w.shape != (shape[0],):
                raise ValueError(f"weights must be [{shape[0]}], got {list(w.shape)}")
            _check_finite(None, "weight", w)
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


def _weighted_sum(values: np.ndarray, weight: np.ndarray | None) -> float:
    """Σ w·x in float64 (x may be float32). einsum, not np.dot: BLAS threads contend with torch's
    and with Arrow's thread pools on small machines and made the dot 10× slower [project]."""
    if weight is None:
        return float(values.sum(dtype=np.float64))
    return float(np.einsum("i,i->", weight, values, dtype=np.float64, casting="safe"))


def _check_binary(task: str, pred: np.ndarray, label: np.ndarray) -> None:
    _check_range(task, "pred", pred, 0.0, 1.0)
    _check_range(task, "label", label, 0.0, 1.0)


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _entropy_rate(rate: float) -> float:
    """h(q) = −q log q − (1−q) log(1−q), natural log (the base cancels in NE)."""
    return -rate * math.log(rate) - (1 - rate) * math.log(1 - rate)


# ----------------------------------------------------------------------------- per-task states


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
        _check_binary(self.name, pred, label)

    def add(self, pred: np.ndarray, label: np.ndarray, weight: np.ndarray | None) -> None:
        """pred [n] in [0, 1], label [n] float64 in [0, 1] (both checked), weight [n] float64 or None (1)."""
        n = len(pred)
        if n == 0:
            return
        not_label = 1.0 - label
        soft = int(np.count_nonzero((label != 0) & (label != 1)))
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
                       -_weighted_sum(log_likelihood, weight), _weighted_sum(pred, weight)])
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

        put("positive_rate", _ratio(pos, total), no_rows)
        put("mean_pred", _ratio(pred, total), no_rows)
        put("calibration", _ratio(pred, pos), no_rows if total <= 0 else "no positive mass (POS = 0)")
        put("logloss", _ratio(ce, total), no_rows)
        if total <= 0 or pos <= 0 or neg <= 0:
            empty_class = "positive mass (POS = 0)" if pos <= 0 else "negative mass (NEG = 0)"
            put("ne", None, no_rows if total <= 0 else f"no {empty_class}: the label entropy H(p̄) is 0")
        else:  # H(p̄) = −POS·log p̄ − NEG·log(1 − p̄), with 1 − p̄ = NEG/W
            put("ne", float(ce / (-pos * math.log(pos / total) - neg * math.log(neg / total))), "")
        if baseline_rate is not None:
            put("ne_train_prior", _ratio(ce, total * _entropy_rate(baseline_rate)), no_rows)
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
        _check_finite(self.name, "pred", pred)
        _check_finite(self.name, "label", label)

    def add(self, pred: np.ndarray, label: np.ndarray, weight: np.ndarray | None) -> None:
        """pred, label [n] finite (checked); weight [n] float64 or None (1)."""
        if len(pred) == 0:
            return
        p = pred.astype(np.float64, copy=False)
        error = p - label
        self.counts += len(p)
        self.sums.add([len(p) if weight is None else weight.sum(), _weighted_sum(p, weight),
                       _weighted_sum(label, weight), _weighted_sum(error * error, weight),
                       _weighted_sum(np.abs(error), weight)])

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
            out[key] = _ratio(numerator, total)
        out["null_reasons"] = {} if total > 0 else {
            key: "no rows with mask 1 and weight > 0 (W = 0)" for key in ("mean_pred", "mean_label", "mse", "mae")}
        return out


TaskState = BinaryTaskState | RegressionTaskState


# ----------------------------------------------------------------------------- collectives


def _collective_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _distributed_world(group: Any) -> int:
    import torch.distributed as dist

    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def all_reduce_arrays_(arrays: Sequence[np.ndarray], group: Any = None) -> None:
    """All-reduce SUM of numpy arrays of one dtype, in place, as one flat collective."""
    import torch.distributed as dist

    if not arrays:
        return
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays])).to(_collective_device(group))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    reduced = flat.cpu().numpy()
    offset = 0
    for a in arrays:
        a[...] = reduced[offset:offset + a.size].reshape(a.shape)
        offset += a.size


def all_gather_rows(rows: np.ndarray, group: Any = None) -> np.ndarray:
    """Concatenation, in rank order, of every rank's `rows` ([n_r, ...], any n_r, same dtype and trailing shape)."""
    import torch.distributed as dist

    device = _collective_device(group)
    world = dist.get_world_size(group)
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c.item()) for c in counts]
    padded = np.zeros((max(sizes),) + rows.shape[1:], dtype=rows.dtype)
    padded[:rows.shape[0]] = rows
    mine = torch.from_numpy(padded).to(device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    return np.concatenate([g.cpu().numpy()[:n] for g, n in zip(gathered, sizes)])


def _all_reduce_states_(states: Sequence[TaskState], extra_ints: Sequence[np.ndarray], group: Any) -> None:
    """Sum every fixed-shape state over ranks (floats and ints as two collectives) and merge the
    exact-mode maps by key (all-gather, then key-wise addition)."""
    fixed = [a for s in states for a in s.fixed_arrays().values()] + list(extra_ints)
    all_reduce_arrays_([a for a in fixed if a.dtype == np.float64], group)
    all_reduce_arrays_([a for a in fixed if a.dtype == np.int64], group)
    for state in states:
        exact = getattr(state, "exact", None)
        if exact is not None:
            gathered = all_gather_rows(np.stack(exact.arrays(), axis=1), group)
            exact.set_arrays(gathered[:, 0], gathered[:, 1], gathered[:, 2])


# ----------------------------------------------------------------------------- the accumulators


class MultiTaskMetrics:
    """Per-task offline metrics over any number of batches, files and ranks (docs/MATH.md §10).

    tasks: the model's tasks in label-column order (binary: NE/AUC/calibration; regression: MSE/MAE).
    auc_mode: "bounded" (histogram, with certified bound) or "exact" (sparse score map, bound 0).
    baseline_rates: training positive rate per binary task, for `ne_train_prior` (He14's NE).
    mantissa_bits: histogram resolution k (bins = 127·2^k + 1, relative width ≤ 2^-k).
    """

    def __init__(self, tasks: Sequence[Task], auc_mode: AucMode = "bounded", *,
                 baseline_rates: Mapping[str, float] | None = None, mantissa_bits: int = DEFAULT_MANTISSA_BITS):
        if auc_mode not in ("bounded", "exact"):
            raise ValueError(f"auc_mode must be 'bounded' or 'exact', got {auc_mode!r}")
        if not 1 <= mantissa_bits <= 23:
            raise ValueError(f"mantissa_bits must be in [1, 23], got {mantissa_bits}")
        names = [t.name for t in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be non-empty with unique names, got {names}")
        self.tasks = tuple(tasks)
        self.auc_mode, self.mantissa_bits = auc_mode, mantissa_bits
        self.baseline_rates = _check_baseline_rates(baseline_rates or {}, self.tasks)
        self.rows = np.zeros(1, dtype=np.int64)  # rows with weight > 0 over all updates
        self._states: list[TaskState] = [
            BinaryTaskState(t.name, auc_mode, mantissa_bits) if t.kind == "binary" else RegressionTaskState(t.name)
            for t in self.tasks]

    def update(self, preds: Any, labels: Any, masks: Any = None, weights: Any = None) -> None:
        """Add one batch (torch tensors or numpy arrays).

        preds [B, T] probabilities (binary) or values (regression); labels [B, T]; masks [B, T] in
        {0, 1} or None (all 1); weights [B] ≥ 0 or None (all 1). Rows with mask 0 or weight 0
        contribute nothing, so their labels and predictions are not even checked.
        Raises MetricInputError (a ValueError naming the task and field) on bad values, before any
        state changes: a batch is added whole or not at all.
        """
        batch = _Batch(preds, labels, masks, weights, len(self.tasks))
        columns = [batch.task_columns(t, batch.task_rows(t, state.name)) for t, state in enumerate(self._states)]
        for state, (pred, label, _) in zip(self._states, columns):
            state.check(pred, label)
        for state, task_columns in zip(self._states, columns):
            state.add(*task_columns)
        self.rows += batch.live_rows()

    def merge_(self, other: "MultiTaskMetrics") -> None:
        """Add `other`'s states into this one (same tasks, mode and resolution)."""
        self._check_compatible(other)
        self.rows += other.rows
        for mine, theirs in zip(self._states, other._states):
            mine.merge_(theirs)

    def all_reduce_(self, group: Any = None) -> None:
        """Sum the states of every rank of `group` (torch.distributed, gloo or NCCL) into every rank.

        Every rank must call it (a collective). A no-op without an initialised process group.
        """
        if _distributed_world(group) > 1:
            _all_reduce_states_(self._states, [self.rows], group)

    def compute(self) -> dict[str, Any]:
        """{"rows": N, "auc_mode": mode, "tasks": {name: {metric: value or None, "null_reasons": {...}}}}."""
        return {"rows": int(self.rows[0]), "auc_mode": self.auc_mode,
                "tasks": {s.name: s.compute(self.baseline_rates.get(s.name)) for s in self._states}}

    def histograms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{binary task: (pos_b, neg_b)} in ascending score order (for ROC / reliability plots)."""
        return {s.name: s.histogram() for s in self._states if isinstance(s, BinaryTaskState)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors: `rows`, `<task>.<state>` and, in exact mode, `<task>.exact` [U, 3]."""
        out = {"rows": torch.from_numpy(self.rows.copy())}
        for s in self._states:
            out.update({f"{s.name}.{k}": torch.from_numpy(v.copy()) for k, v in s.fixed_arrays().items()})
            if getattr(s, "exact", None) is not None:
                out[f"{s.name}.exact"] = torch.from_numpy(np.stack(s.exact.arrays(), axis=1))
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"metric state keys differ: missing {sorted(set(expected) - set(state))}, "
                             f"unexpected {sorted(set(state) - set(expected))}")
        self.rows[...] = state["rows"].numpy()
        for s in self._states:
            for k, array in s.fixed_arrays().items():
                value = state[f"{s.name}.{k}"].numpy()
                if value.shape != array.shape:
                    raise ValueError(f"metric state {s.name}.{k}: shape {list(value.shape)} != {list(array.shape)}")
                array[...] = value
            if getattr(s, "exact", None) is not None:
                exact = state[f"{s.name}.exact"].numpy()
                s.exact.set_arrays(exact[:, 0], exact[:, 1], exact[:, 2])

    def _check_compatible(self, other: "MultiTaskMetrics") -> None:
        if (other.tasks, other.auc_mode, other.mantissa_bits) != (self.tasks, self.auc_mode, self.mantissa_bits):
            raise ValueError("cannot merge metrics over different tasks, AUC modes or histogram resolutions")


def _check_baseline_rates(rates: Mapping[str, float], tasks: Sequence[Task]) -> dict[str, float]:
    binary = {t.name for t in tasks if t.kind == "binary"}
    unknown = sorted(set(rates) - binary)
    if unknown:
        raise ValueError(f"baseline rates given for {unknown}, which are not binary tasks {sorted(binary)}")
    for name, rate in rates.items():
        if not 0 < rate < 1:
            raise ValueError(f"baseline rate of task {name!r} must be in (0, 1), got {rate}")
    return dict(rates)


class GroupedAucMetrics:
    """GAUC per binary task: Σ_u W_u·AUC_u / Σ_u W_u over users u with both classes (DIN-style,
    W_u = the user's weighted row count for the task) [project: weighting choice].

    Assumes each user's rows arrive contiguously (the log is grouped by user) and within one
    stream segment between `flush()` calls (the job flushes at file ends, so a user must not span
    files). A user id that reappears after another user within one update is an error; a reappearance
    across updates cannot be seen in bounded memory and would count that user twice.
    The last user of each update is held back until the next update or `flush()`.
    """

    def __init__(self, task_names: Sequence[str]):
        self.task_names = tuple(task_names)
        self.sums = CompensatedSum((len(self.task_names), 2))  # [Σ W_u·AUC_u, Σ W_u] over defined users
        self.users = np.zeros((len(self.task_names), 2), dtype=np.int64)  # users with AUC, users skipped
        self._pending: tuple[np.ndarray, ...] | None = None

    def update(self, user_ids: Any, preds: Any, labels: Any, masks: Any = None, weights: Any = None) -> None:
        """user_ids [B] (ints or strings); the rest as MultiTaskMetrics.update."""
        batch = _Batch(preds, labels, masks, weights, len(self.task_names))
        ids = _to_numpy(user_ids)
        if ids.shape != (batch.num_rows,):
            raise ValueError(f"user_ids must be [{batch.num_rows}], got {list(ids.shape)}")
        for t, name in enumerate(self.task_names):  # checked now: rows may be held back to a later update
            _check_binary(name, *batch.task_columns(t, batch.task_rows(t, name))[:2])
        # Explicit all-ones masks/weights so that held-back rows concatenate with any later update.
        masks = np.ones(batch.preds.shape) if batch.masks is None else batch.masks
        weights = np.ones(batch.num_rows) if batch.weights is None else batch.weights
        rows = (ids, batch.preds, batch.labels, masks, weights)
        if self._pending is not None:
            rows = tuple(np.concatenate([old, new]) for old, new in zip(self._pending, rows))
            self._pending = None
        ids = rows[0]
        if len(ids) == 0:
            return
        starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
        _check_grouped(ids[starts])
        cut = starts[-1]  # the last user may continue in the next update
        self._pending = tuple(r[cut:] for r in rows)
        if cut:
            self._add_users(*(r[:cut] for r in rows), starts[:-1])

    def flush(self) -> None:
        """Close the held-back user (end of a file / of the stream)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._add_users(*pending, np.zeros(1, dtype=np.int64))

    def merge_(self, other: "GroupedAucMetrics") -> None:
        self.flush()
        other.flush()
        self.sums.merge_(other.sums)
        self.users += other.users

    def all_reduce_(self, group: Any = None) -> None:
        self.flush()
        if _distributed_world(group) > 1:
            self.sums.fold()
            all_reduce_arrays_([self.sums.total, self.sums.comp], group)
            all_reduce_arrays_([self.users], group)

    def compute(self) -> dict[str, dict[str, Any]]:
        """{task: {"gauc", "gauc_users", "gauc_users_skipped", "null_reasons"}}."""
        self.flush()
        values = self.sums.value()
        out = {}
        for t, name in enumerate(self.task_names):
            gauc = _ratio(float(values[t, 0]), float(values[t, 1]))
            out[name] = {"gauc": gauc, "gauc_users": int(self.users[t, 0]),
                         "gauc_users_skipped": int(self.users[t, 1]),
                         "null_reasons": {} if gauc is not None else
                         {"gauc": "no user has both positive and negative mass"}}
        return out

    def _add_users(self, ids: np.ndarray, preds: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                   weights: np.ndarray, starts: np.ndarray) -> None:
        """Rows of complete, already checked users; starts: [U] first row of each user."""
        user_of_row = np.zeros(len(ids), dtype=np.int64)
        user_of_row[starts[1:]] = 1
        user_of_row = np.cumsum(user_of_row)
        batch = _Batch(preds, labels, masks, weights, len(self.task_names))
        sums = np.zeros((len(self.task_names), 2))
        users = np.zeros_like(self.users)
        for t, name in enumerate(self.task_names):
            rows = batch.task_rows(t, name)
            pred, label, weight = batch.task_columns(t, rows)
            users_of_task = user_of_row if rows is None else user_of_row[rows]
            auc, defined, mass = grouped_auc(users_of_task, pred.astype(np.float64), weight * label,
                                             weight * (1.0 - label), len(starts))
            sums[t] = np.dot(mass[defined], auc[defined]), mass[defined].sum()
            users[t] = defined.sum(), np.count_nonzero(mass > 0) - defined.sum()
        self.sums.add(sums)
        self.users += users


def _check_grouped(run_ids: np.ndarray) -> None:
    """MetricInputError when a user id starts two runs (its rows are not contiguous)."""
    unique, counts = np.unique(run_ids, return_counts=True)
    if len(unique) != len(run_ids):
        user = unique.tolist()[np.argmax(counts > 1)]
        raise MetricInputError(None, "user", f"the log is not grouped by user: user {user!r} has rows in "
                                             f"{counts.max()} separate runs (GAUC needs each user's rows contiguous)")


class SegmentedMetrics:
    """`MultiTaskMetrics` per value of a segment column (e.g. country), created as values appear.

    The histogram resolution defaults to SEGMENT_MANTISSA_BITS (coarser, so memory stays
    O(segments × tasks × 16k bins)); `max_segments` bounds it and is a clear error when exceeded.
    """

    def __init__(self, tasks: Sequence[Task], auc_mode: AucMode = "bounded", *,
                 baseline_rates: Mapping[str, float] | None = None, mantissa_bits: int = SEGMENT_MANTISSA_BITS,
                 max_segments: int = 64):
        self.tasks, self.auc_mode, self.mantissa_bits = tuple(tasks), auc_mode, mantissa_bits
        self.baseline_rates = baseline_rates
        self.max_segments = max_segments
        self.segments: dict[str, MultiTaskMetrics] = {}

    def update(self, segment_codes: Any, segment_names: Sequence[str], preds: Any, labels: Any,
               masks: Any = None, weights: Any = None) -> None:
        """segment_codes [B] int indices into segment_names (this batch's dictionary); the rest as
        MultiTaskMetrics.update."""
        codes = _to_numpy(segment_codes).astype(np.int64, copy=False)
        preds, labels = _to_numpy(preds), _to_numpy(labels)
        masks = None if masks is None else _to_numpy(masks)
        weights = None if weights is None else _to_numpy(weights)
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(segment_names)))])
        for code, name in enumerate(segment_names):
            rows = order[bounds[code]:bounds[code + 1]]
            if len(rows):
                self._segment(str(name)).update(preds[rows], labels[rows], None if masks is None else masks[rows],
                                                None if weights is None else weights[rows])

    def merge_(self, other: "SegmentedMetrics") -> None:
        for name, metrics in other.segments.items():
            self._segment(name).merge_(metrics)

    def all_reduce_(self, group: Any = None) -> None:
        """Agree on the union of segment names (all-gather), then all-reduce each segment in name order."""
        if _distributed_world(group) <= 1:
            return
        # One JSON line per rank (JSON escapes newlines inside strings, so lines separate ranks).
        encoded = np.frombuffer((json.dumps(sorted(self.segments)) + "\n").encode(), dtype=np.uint8)
        text = all_gather_rows(encoded[:, None], group)[:, 0].tobytes().decode()
        names = set().union(*(json.loads(line) for line in text.splitlines()))
        for name in sorted(names):
            self._segment(name).all_reduce_(group)

    def compute(self) -> dict[str, dict[str, Any]]:
        return {name: self.segments[name].compute() for name in sorted(self.segments)}

    def _segment(self, name: str) -> MultiTaskMetrics:
        if name not in self.segments:
            if len(self.segments) >= self.max_segments:
                raise ValueError(f"more than {self.max_segments} segment values (at {name!r}); "
                                 "segment by a coarser column")
            self.segments[name] = MultiTaskMetrics(self.tasks, self.auc_mode, baseline_rates=self.baseline_rates,
                                                   mantissa_bits=self.mantissa_bits)
        return self.segments[name]
