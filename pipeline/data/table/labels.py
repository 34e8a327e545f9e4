"""Label, mask and sample-weight columns from the spec's rules, vectorised per batch.

A rule reads one raw column. Text rules (`equals`/`one_of` with strings) compare the value's text
(integers in decimal); numeric rules (`equals`/`one_of` with numbers, `greater_than`, `at_least`)
compare numbers; a rule without an operator takes the value itself (binary: must be 0 or 1).
A null or unparseable value cannot be labelled: where the task's mask is 1 such a row is an error
or, with `bad_labels: drop`, dropped and counted per task. Where the mask is 0 the label is unused
(written as 0). A mask that cannot be evaluated is a bad row as well.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.table.readers import RawBatch
from pipeline.data.table.spec import RuleSpec, TableSpec, TaskSpec
from pipeline.data.table.values import as_numbers, as_text, bad_value, column


def evaluate_rule(batch: RawBatch, rule: RuleSpec, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 [rows], ok bool [rows]): ok is false for null / unparseable / non-0/1 values."""
    if rule.is_text:
        text = as_text(column(batch, rule.column))
        wanted = [rule.equals] if rule.equals is not None else list(rule.one_of)
        hit = pc.is_in(text, value_set=pa.array(wanted, text.type)).to_numpy(zero_copy_only=False)
        return hit.astype(np.float64), pc.is_valid(text).to_numpy(zero_copy_only=False)
    x, _ = as_numbers(batch, rule.column, invalid="null")
    ok = ~np.isnan(x)
    if rule.equals is not None:
        return (x == rule.equals).astype(np.float64), ok
    if rule.one_of is not None:
        return np.isin(x, np.asarray(rule.one_of, np.float64)).astype(np.float64), ok
    if rule.greater_than is not None:
        return (x > rule.greater_than).astype(np.float64), ok
    if rule.at_least is not None:
        return (x >= rule.at_least).astype(np.float64), ok
    if binary:
        ok &= (x == 0) | (x == 1)
    return np.where(ok, x, 0.0), ok


@dataclass
class LabelBlock:
    """Labels and masks of one batch: labels/masks float32 [rows, T], keep bool [rows]."""

    labels: np.ndarray
    masks: np.ndarray
    keep: np.ndarray
    dropped: dict[str, int]  # task -> rows dropped because of it (the first failing task counts)


def task_labels(batch: RawBatch, spec: TableSpec) -> LabelBlock:
    """Evaluate every task's label and mask; bad rows raise or are marked for dropping."""
    rows = batch.table.num_rows
    labels = np.zeros((rows, len(spec.tasks)), np.float32)
    masks = np.ones((rows, len(spec.tasks)), np.float32)
    keep = np.ones(rows, bool)
    dropped = {}
    for t, task in enumerate(spec.tasks):
        if task.mask:
            mask, mask_ok = evaluate_rule(batch, task.mask, binary=True)
        else:
            mask, mask_ok = np.ones(rows), np.ones(rows, bool)
        label, label_ok = evaluate_rule(batch, task.label, binary=task.kind == "binary")
        bad = ~mask_ok | ((mask == 1) & ~label_ok)
        if bad.any():
            bad_rows = np.flatnonzero(bad)
            if spec.bad_labels == "error":
                raise _bad_label(batch, task, bad_rows, mask_ok)
            dropped[task.name] = int((bad & keep).sum())
            keep &= ~bad
        masks[:, t] = mask
        labels[:, t] = np.where((mask == 1) & label_ok, label, 0.0)
    return LabelBlock(labels, masks, keep, dropped)


def _bad_label(batch: RawBatch, task: TaskSpec, rows: np.ndarray, mask_ok: np.ndarray) -> Exception:
    hint = " (or set bad_labels: drop to drop and count such rows)"
    if not mask_ok[rows[0]]:
        return bad_value(batch, task.mask.column, rows, f"task {task.name!r}: the mask rule cannot read", hint)
    kind = "a 0/1 label" if task.kind == "binary" and task.label.operator is None else "a label"
    return bad_value(batch, task.label.column, rows, f"task {task.name!r}: cannot make {kind} of", hint)


def sample_weights(batch: RawBatch, column_name: str) -> np.ndarray:
    """float32 [rows]; null, negative or unparseable weights are an error naming the row."""
    w, _ = as_numbers(batch, column_name, invalid="null")
    bad = np.flatnonzero(np.isnan(w) | (w < 0))
    if len(bad):
        raise bad_value(batch, column_name, bad, "sample weight must be a number >= 0, got")
    return w.astype(np.float32)
