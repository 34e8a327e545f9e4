"""Arrow -> MultiTaskBatch: column checks, vectorised value validation and tensor conversion.

Nothing here loops over rows in Python: lengths come from `pc.list_value_length`, ids from
`flatten()`, checks are numpy reductions (docs/STACK.md §3.5). Bad input raises `DataError` naming
the file, row group and column. Ids of `hashed: true` features go through
`schema.hash_ids_into_range`. The one tolerated irregularity, an empty (or null) id list, pools to
zero in the model and is counted in `ReadStats.empty_lists` [project].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.batch import MultiTaskBatch
from pipeline.data.schema import DataError, DatasetSchema, DenseColumn, SparseColumn, hash_ids_into_range

ArrowData = Union[pa.Table, pa.RecordBatch]


@dataclass
class ReadStats:
    """Counters of one stream in the process that iterates it (each DataLoader worker has its own)."""

    rows: int = 0
    batches: int = 0
    empty_lists: dict[str, int] = field(default_factory=dict)  # rows whose id list was empty or null

    def summary(self) -> str:
        empty = {k: v for k, v in self.empty_lists.items() if v}
        return f"{self.rows} rows in {self.batches} batches; empty id lists (pooled to zero): {empty or 'none'}"


# -- column types ---------------------------------------------------------------------------------
def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_int64_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and t.value_type == pa.int64()


def _expected_types(schema: DatasetSchema, with_keys: bool) -> dict[str, tuple[str, object]]:
    """column -> (description, predicate or exact type) for every column the reader projects."""
    expected: dict[str, tuple[str, object]] = {}
    if with_keys:
        expected[schema.key] = ("int64 key", pa.int64())
    for d in schema.dense:
        expected[d.column] = (
            ("float32", pa.float32()) if d.dim is None
            else (f"fixed_size_list<float32>[{d.dim}]", pa.list_(pa.float32(), d.dim))
        )
    for s in schema.sparse:
        expected[s.column] = ("int64", pa.int64()) if s.layout == "scalar" else ("list<int64>", _is_int64_list)
    for t in schema.tasks:
        expected[t.label] = ("numeric label", _is_numeric)
        if t.mask:
            expected[t.mask] = ("numeric 0/1 mask", _is_numeric)
    if schema.weight:
        expected[schema.weight] = ("numeric weight", _is_numeric)
    return expected


def check_file_columns(schema: DatasetSchema, arrow_schema: pa.Schema, path: str, with_keys: bool = True) -> None:
    """DataError naming `path` and the column when a needed column is missing or has the wrong type."""
    for column, (description, want) in _expected_types(schema, with_keys).items():
        index = arrow_schema.get_field_index(column)
        if index < 0:
            raise DataError(f"{path}: missing column '{column}' (schema.yaml needs it as {description})")
        got = arrow_schema.field(index).type
        ok = want(got) if callable(want) else got == want
        if not ok:
            raise DataError(f"{path}: column '{column}' has type {got}, expected {description}")


# -- value validation -------------------------------------------------------------------------------
def _array(data: ArrowData, column: str) -> pa.Array:
    """One contiguous array (zero-copy unless the column spans several chunks)."""
    col = data.column(column)
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _floats(arr: pa.Array) -> np.ndarray:
    """Numeric/boolean values as float64 with nulls as NaN (so one isfinite/isin test covers nulls)."""
    return arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def _nulls(arr: pa.Array) -> np.ndarray:
    return arr.is_null().to_numpy(zero_copy_only=False)


def _list_lengths(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int32)


class ArrowBatchConverter:
    """Validates Arrow chunks against a schema and converts them into MultiTaskBatch.

    dense [B, dense_dim] float32 (schema order), sparse KJT (schema order, key-major, int64 ids,
    int32 lengths), labels/masks [B, T] float32, weights [B] float32, keys [B] int64 (or None).
    """

    def __init__(self, schema: DatasetSchema, with_keys: bool = True) -> None:
        self.schema = schema
        self.with_keys = with_keys

    # -- validation ---------------------------------------------------------------------------------
    def validate(self, data: ArrowData, path: str, row_group: int, first_row: int = 0) -> None:
        """DataError for NaN/inf dense values, bad labels/masks/weights, null keys and bad ids.

        first_row: index of `data`'s first row inside the row group (for the message).
        """
        def fail(column: str, problem: str, bad: np.ndarray) -> None:
            if bad.any():
                row = first_row + int(np.flatnonzero(bad)[0])
                raise DataError(f"{path}: row group {row_group}, column '{column}': {int(bad.sum())} "
                                f"{problem} (first at row {row} of the row group)")

        schema = self.schema
        if self.with_keys:
            fail(schema.key, "null key(s)", _nulls(_array(data, schema.key)))
        for d in schema.dense:
            self._validate_dense(d, _array(data, d.column), fail)
        for s in schema.sparse:
            self._validate_ids(s, _array(data, s.column), fail)
        for t in schema.tasks:
            active = self._mask(data, t.mask, fail) if t.mask else True
            labels = _floats(_array(data, t.label))
            if t.kind == "binary":
                fail(t.label, "null label(s) or label(s) outside {0, 1}", active & ~((labels == 0) | (labels == 1)))
            else:
                fail(t.label, "null/NaN/inf regression label(s)", active & ~np.isfinite(labels))
        if schema.weight:
            weights = _floats(_array(data, schema.weight))
            fail(schema.weight, "null, negative or non-finite weight(s)", ~(np.isfinite(weights) & (weights >= 0)))

    @staticmethod
    def _validate_dense(d: DenseColumn, arr: pa.Array, fail) -> None:
        fail(d.column, "null dense value(s)", _nulls(arr))
        values = (arr.flatten() if d.dim is not None else arr).to_numpy(zero_copy_only=False)  # nulls -> NaN
        fail(d.column, "row(s) with NaN/inf/null dense values", ~np.isfinite(values).reshape(-1, d.width).all(axis=1))

    @staticmethod
    def _mask(data: ArrowData, column: str, fail) -> np.ndarray:
        mask = _floats(_array(data, column))
        fail(column, "null mask value(s) or value(s) outside {0, 1}", ~((mask == 0) | (mask == 1)))
        return mask == 1

    @staticmethod
    def _validate_ids(s: SparseColumn, arr: pa.Array, fail) -> None:
        flat = arr if s.layout == "scalar" else arr.flatten()  # null lists are empty lists (counted later)

        def fail_ids(problem: str, bad_ids: np.ndarray) -> None:
            if bad_ids.any():
                if s.layout == "list":  # flags per id -> flags per row, only on the error path
                    row_of_id = np.repeat(np.arange(len(arr)), _list_lengths(arr))
                    bad_ids = np.bincount(row_of_id[bad_ids], minlength=len(arr)) > 0
                fail(s.column, problem, bad_ids)

        fail_ids("row(s) with null ids", _nulls(flat))
        ids = flat.to_numpy(zero_copy_only=False)
        fail_ids("row(s) with negative ids", ids < 0)
        if not s.hashed:
            fail_ids(f"row(s) with ids >= num_embeddings={s.num_embeddings} (hashed: false)",
                     ids >= s.num_embeddings)

    # -- conversion -----------------------------------------------------------------------------------
    def convert(self, data: ArrowData, stats: Optional[ReadStats] = None) -> MultiTaskBatch:
        """One validated chunk of B rows -> MultiTaskBatch; empty id lists are counted into `stats`."""
        schema = self.schema
        rows = data.num_rows
        dense = np.empty((rows, schema.dense_dim), dtype=np.float32)
        offset = 0
        for d in schema.dense:
            arr = _array(data, d.column)
            values = arr.flatten() if d.dim is not None else arr
            dense[:, offset:offset + d.width] = values.to_numpy(zero_copy_only=False).reshape(rows, d.width)
            offset += d.width
        labels = self._stack(data, [t.label for t in schema.tasks], rows, fill=0.0)
        masks = self._stack(data, [t.mask for t in schema.tasks], rows, fill=1.0)
        weights = self._stack(data, [schema.weight], rows, fill=1.0)[:, 0]
        keys = None
        if self.with_keys:
            keys = torch.from_numpy(np.array(_array(data, schema.key).to_numpy(zero_copy_only=False), dtype=np.int64))
        if stats is not None:
            stats.rows += rows
            stats.batches += 1
        return MultiTaskBatch(
            dense=torch.from_numpy(dense),
            sparse_features=self._kjt(data, rows, stats),
            labels=torch.from_numpy(labels),
            masks=torch.from_numpy(masks),
            weights=torch.from_numpy(np.ascontiguousarray(weights)),
            keys=keys,
        )

    @staticmethod
    def _stack(data: ArrowData, columns: list[Optional[str]], rows: int, fill: float) -> np.ndarray:
        """[rows, len(columns)] float32; a None column is constant `fill`, nulls become `fill`."""
        out = np.full((rows, len(columns)), fill, dtype=np.float32)
        for j, column in enumerate(columns):
            if column:
                values = _array(data, column).cast(pa.float32(), safe=False)
                out[:, j] = pc.fill_null(values, fill).to_numpy(zero_copy_only=False)
        return out

    def _kjt(self, data: ArrowData, rows: int, stats: Optional[ReadStats]) -> KeyedJaggedTensor:
        values, lengths = [], []
        for s in self.schema.sparse:
            arr = _array(data, s.column)
            if s.layout == "scalar":
                ids = arr.to_numpy(zero_copy_only=False)
                lens = np.ones(rows, dtype=np.int32)
            else:
                ids = arr.flatten().to_numpy(zero_copy_only=False)
                lens = _list_lengths(arr)
                if stats is not None:
                    stats.empty_lists[s.name] = stats.empty_lists.get(s.name, 0) + int((lens == 0).sum())
            values.append(hash_ids_into_range(ids, s.num_embeddings) if s.hashed else ids)
            lengths.append(lens)
        return kjt_from_arrays([s.name for s in self.schema.sparse], values, lengths, rows)


def kjt_from_arrays(keys: list[str], values: list[np.ndarray], lengths: list[np.ndarray], rows: int) -> KeyedJaggedTensor:
    """Key-major KJT from per-key int64 ids and int32 lengths ([rows] each); the arrays are copied."""
    if not keys:
        return KeyedJaggedTensor(keys=[], values=torch.empty(0, dtype=torch.int64),
                                 lengths=torch.empty(0, dtype=torch.int32), stride=rows)
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32, copy=False)),
        stride=rows,
        length_per_key=[len(v) for v in values],
    )
