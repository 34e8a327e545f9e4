"""`MultiTaskMetrics`: the per-task metric states of a multi-task model, fed batch by batch.

The evaluator, validation and `mtrec metrics` feed it; `merge_` and `all_reduce_` add states, so a
report does not depend on how rows were split into batches, files or ranks (up to float64 rounding,
kept ~1e-16 relative by compensated summation; see docs/METRICS.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from models.inputs import Task
from pipeline.metrics.auc import DEFAULT_MANTISSA_BITS
from pipeline.metrics.numerics import MetricBatch
from pipeline.metrics.task_state import AucMode, BinaryTaskState, RegressionTaskState, TaskState
from pipeline.runtime.collectives import all_gather_rows, all_reduce_arrays_, group_world_size

if TYPE_CHECKING:
    import torch


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
        batch = MetricBatch(preds, labels, masks, weights, len(self.tasks))
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
        if group_world_size(group) > 1:
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
        import torch  # here only: the states are numpy, and `mtrec metrics` on 1 process never needs torch

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
