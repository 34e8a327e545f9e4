"""Which split each row goes to: by file, by a hash of a key column, or by a timestamp.

`files`: a file listed under a split sends all its rows there. `hash` / `time` carve the *pool*
(every file of a `files` list, or the files listed under `train`) and leave files listed under
valid/test where they are:
- hash: draw = top 53 bits of splitmix64(fnv1a64(text of the column) XOR seed) / 2^53 (hashing.py),
  or of splitmix64(row_id XOR seed) without a key column; valid if draw < f_valid, test if
  draw < f_valid + f_test, else train. The same key always lands in the same split, whatever the
  file order or machine.
- time: train if t < cutoff_valid, valid if cutoff_valid <= t < cutoff_test, else test. Cutoffs are
  numbers (compared with a numeric column) or ISO-8601 dates/times (the column is parsed as
  timestamps; values with a zone offset are compared in UTC).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.schema import SPLITS, DataError, splitmix64
from pipeline.data.table.hashing import fnv1a64, unit_interval
from pipeline.data.table.readers import RawBatch
from pipeline.data.table.spec import SplitSpec
from pipeline.data.table.values import as_numbers, as_text, bad_value, column

TRAIN, VALID, TEST = (SPLITS.index(s) for s in ("train", "valid", "test"))


def assign_splits(batch: RawBatch, spec: SplitSpec, key_column: str | None, row_ids: np.ndarray) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of every row: int8 [rows]."""
    rows = batch.table.num_rows
    if batch.file.split is not None and (batch.file.split != "train" or spec.method == "files"):
        return np.full(rows, SPLITS.index(batch.file.split), np.int8)
    if spec.method == "hash":
        return _by_hash(batch, spec, spec.column or key_column, row_ids)
    return _by_time(batch, spec)


def _by_hash(batch: RawBatch, spec: SplitSpec, name: str | None, row_ids: np.ndarray) -> np.ndarray:
    if name is None:  # no key column: the generated row_id, an integer that never comes as text
        hashed = row_ids.astype(np.uint64)
    else:
        text = as_text(column(batch, name))
        nulls = np.flatnonzero(pc.is_null(text).to_numpy(zero_copy_only=False))
        if len(nulls):
            raise bad_value(batch, name, nulls, "the hash split needs a value, got")
        hashed = fnv1a64(text)
    draw = unit_interval(splitmix64(hashed ^ np.uint64(spec.seed)))
    f_valid, f_test = spec.fractions.get("valid", 0.0), spec.fractions.get("test", 0.0)
    return np.where(draw < f_valid, VALID, np.where(draw < f_valid + f_test, TEST, TRAIN)).astype(np.int8)


def _by_time(batch: RawBatch, spec: SplitSpec) -> np.ndarray:
    if isinstance(next(iter(spec.cutoffs.values())), str):
        t = _timestamps(batch, spec.column)
        cut = {k: _timestamps_of(pa.array([v]), f"splits.cutoffs.{k}")[0] for k, v in spec.cutoffs.items()}
    else:
        t, _ = as_numbers(batch, spec.column, invalid="null")
        cut = dict(spec.cutoffs)
        nulls = np.flatnonzero(np.isnan(t))
        if len(nulls):
            raise bad_value(batch, spec.column, nulls, "the time split needs a number, got")
    codes = np.full(len(t), TRAIN, np.int8)
    if "valid" in cut:
        codes[t >= cut["valid"]] = VALID
    if "test" in cut:
        codes[t >= cut["test"]] = TEST
    return codes


def _timestamps(batch: RawBatch, name: str) -> np.ndarray:
    values = column(batch, name)
    nulls = np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))
    if len(nulls):
        raise bad_value(batch, name, nulls, "the time split needs a timestamp, got")
    return _timestamps_of(values, f"{batch.file.path}: column {name!r}")


def _timestamps_of(values: pa.Array, what: str) -> np.ndarray:
    """Microseconds since the epoch (int64) of timestamp or ISO-8601 text values."""
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return pc.cast(values, pa.timestamp("us", getattr(values.type, "tz", None))).cast(pa.int64()).to_numpy()
    for tz in (None, "UTC"):  # naive text first, then text with a zone offset
        try:
            return pc.cast(as_text(values), pa.timestamp("us", tz)).cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid as e:
            error = e
    raise DataError(f"{what}: not an ISO-8601 date/time: {error}")
