"""The int64 key column `row_id`: generated, or from a raw key column, with a duplicate check.

Without `key`, row_id = the row's index over all input files in processing order (train, valid,
test files; sorted glob matches), counting rows that a policy drops, so a row keeps its id when
other rows change. With `key`, integer keys are used as they are and text keys become
splitmix64(fnv1a64(text)) >> 1 (non-negative int63; hashing.py). Duplicates over the whole
dataset are an error, or with `duplicate_keys: drop` every row after the first of a key is dropped
and counted. The set of seen keys is a few sorted numpy levels (merged like an LSM tree), 8 bytes
per distinct key.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.data.table.hashing import string_hash
from pipeline.data.table.readers import RawBatch
from pipeline.data.table.values import as_text, bad_value, column


def key_values(batch: RawBatch, name: str) -> np.ndarray:
    """int64 [rows] keys of the raw key column; a null key is an error naming the row."""
    values = column(batch, name)
    nulls = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
    if len(nulls):
        raise bad_value(batch, name, nulls, "the key must not be null, got")
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64()).to_numpy()
    return (string_hash(as_text(values)) >> np.uint64(1)).astype(np.int64)


class SeenKeys:
    """Keys seen so far; `first_seen(keys)` marks rows whose key is new (not earlier, not repeated)."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []  # sorted, sizes decreasing

    def first_seen(self, keys: np.ndarray) -> np.ndarray:
        """bool [rows]: True for the first occurrence of a key never seen before."""
        unique, first = np.unique(keys, return_index=True)
        fresh = np.ones(len(unique), bool)
        for level in self.levels:
            pos = np.minimum(np.searchsorted(level, unique), len(level) - 1)
            fresh &= level[pos] != unique
        new = np.zeros(len(keys), bool)
        new[first[fresh]] = True
        self._add(unique[fresh])
        return new

    def _add(self, keys: np.ndarray) -> None:
        self.levels.append(keys)
        while len(self.levels) > 1 and len(self.levels[-1]) * 2 >= len(self.levels[-2]):
            top = self.levels.pop()
            self.levels[-1] = np.union1d(self.levels[-1], top)


def check_duplicates(batch: RawBatch, name: str, keys: np.ndarray, seen: SeenKeys, policy: str) -> np.ndarray:
    """bool [rows] of rows to keep; with policy error a duplicate raises DataError naming the row."""
    keep = seen.first_seen(keys)
    if not keep.all() and policy == "error":
        raise bad_value(batch, name, np.flatnonzero(~keep), "duplicate key",
                        " (or set duplicate_keys: drop to keep the first row of each key)")
    return keep
