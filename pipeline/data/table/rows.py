"""Per-batch decisions that both passes make identically: row ids, splits, labels, kept rows.

Pass 1 fits statistics on exactly the train rows that pass 2 writes, because both call `rows_of`
with a fresh `RowState` over the same files in the same order (the generated row_id counts every
input row; the duplicate-key set grows the same way).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from pipeline.data.table.keys import SeenKeys, check_duplicates, key_values
from pipeline.data.table.labels import LabelBlock, task_labels
from pipeline.data.table.readers import RawBatch
from pipeline.data.table.spec import DenseSpec, TableSpec
from pipeline.data.table.splits import assign_splits
from pipeline.data.table.values import as_numbers, bad_value


@dataclass
class Rows:
    """One batch's decisions."""

    splits: np.ndarray  # int8 [rows]: 0 train, 1 valid, 2 test
    labels: LabelBlock
    keep: np.ndarray  # bool [rows]: passed the bad-label and duplicate-key policies
    row_ids: np.ndarray  # int64 [rows]


@dataclass
class RowState:
    """Carried across the batches of one pass: the next generated id and the keys seen so far."""

    next_id: int = 0
    seen: SeenKeys = field(default_factory=SeenKeys)
    duplicates: int = 0


def rows_of(batch: RawBatch, spec: TableSpec, state: RowState) -> Rows:
    n = batch.table.num_rows
    generated = np.arange(state.next_id, state.next_id + n, dtype=np.int64)
    state.next_id += n
    row_ids = key_values(batch, spec.key) if spec.key else generated
    splits = assign_splits(batch, spec.splits, spec.key, generated)
    labels = task_labels(batch, spec)
    keep = labels.keep.copy()
    if spec.key:
        kept = np.flatnonzero(keep)
        fresh = check_duplicates(batch, spec.key, row_ids[kept], state.seen, spec.duplicate_keys)
        keep[kept[~fresh]] = False
        state.duplicates += int((~fresh).sum())
    return Rows(splits, labels, keep, row_ids)


def dense_raw(batch: RawBatch, d: DenseSpec, unparseable: Optional[dict[str, int]] = None) -> np.ndarray:
    """float64 [rows], NaN = null; with `fill: error` a null is an error naming the row."""
    raw, bad = as_numbers(batch, d.source, d.invalid)
    if unparseable is not None:
        unparseable[d.name] += bad
    if d.fill == "error" and np.isnan(raw).any():
        raise bad_value(batch, d.source, np.flatnonzero(np.isnan(raw)), "null value (fill: error):")
    return raw
