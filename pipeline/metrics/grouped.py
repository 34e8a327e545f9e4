"""`GroupedAucMetrics`: GAUC, the mass-weighted mean of per-user AUCs, over a log grouped by user.

Same update / merge / all-reduce / compute shape as `MultiTaskMetrics`; each user's exact AUC is
computed when the user's rows are complete (pipeline/metrics/auc.py: grouped_auc).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.metrics.auc import grouped_auc
from pipeline.metrics.numerics import CompensatedSum, MetricBatch, MetricInputError, check_binary, ratio, to_numpy
from pipeline.runtime.collectives import all_reduce_arrays_, group_world_size


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
        batch = MetricBatch(preds, labels, masks, weights, len(self.task_names))
        ids = to_numpy(user_ids)
        if ids.shape != (batch.num_rows,):
            raise ValueError(f"user_ids must be [{batch.num_rows}], got {list(ids.shape)}")
        for t, name in enumerate(self.task_names):  # checked now: rows may be held back to a later update
            check_binary(name, *batch.task_columns(t, batch.task_rows(t, name))[:2])
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
        if group_world_size(group) > 1:
            self.sums.fold()
            all_reduce_arrays_([self.sums.total, self.sums.comp], group)
            all_reduce_arrays_([self.users], group)

    def compute(self) -> dict[str, dict[str, Any]]:
        """{task: {"gauc", "gauc_users", "gauc_users_skipped", "null_reasons"}}."""
        self.flush()
        values = self.sums.value()
        out = {}
        for t, name in enumerate(self.task_names):
            gauc = ratio(float(values[t, 0]), float(values[t, 1]))
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
        batch = MetricBatch(preds, labels, masks, weights, len(self.task_names))
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
