"""A tiny hand-made dataset that exercises every schema feature (used by the reader and bad-input tests).

Columns: row_id; dense d0, d1 (float32) and v (fixed_size_list<float32>[3]); sparse a (scalar, 10
ids), b (list, 50 ids, some empty/null lists), h (list, hashed into 7 buckets, huge raw ids);
tasks click (binary), conv (binary, masked by m_conv; label null where the mask is 0) and value
(regression); sample weight w.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.schema import DatasetSchema, DenseColumn, SparseColumn, TaskColumn

TINY_FILE_ROWS = {"train": (37, 25, 8), "valid": (13,), "test": (11,)}
TINY_ROW_GROUP_ROWS = 10


def tiny_schema() -> DatasetSchema:
    return DatasetSchema(
        name="tiny",
        dense=(DenseColumn("d0"), DenseColumn("d1"), DenseColumn("v", dim=3)),
        sparse=(SparseColumn(name="a", column="a", num_embeddings=10),
                SparseColumn(name="b", column="b", num_embeddings=50, layout="list", pooling="mean"),
                SparseColumn(name="h", column="h", num_embeddings=7, layout="list", hashed=True)),
        tasks=(TaskColumn(name="click", label="y_click"),
               TaskColumn(name="conv", label="y_conv", mask="m_conv"),
               TaskColumn(name="value", label="y_value", kind="regression", loss_weight=0.5)),
        weight="w",
    )


def tiny_table(rows: int, first_row_id: int, seed: int) -> pa.Table:
    """Random but valid rows; row_id = first_row_id + i."""
    rng = np.random.default_rng(seed)
    b_lengths = rng.integers(0, 4, rows)
    b_offsets = np.concatenate([[0], np.cumsum(b_lengths)]).astype(np.int32)
    b_valid = rng.random(rows) > 0.1  # ~10% null lists: read as empty lists
    h_lengths = rng.integers(1, 3, rows)
    h_offsets = np.concatenate([[0], np.cumsum(h_lengths)]).astype(np.int32)
    mask = (rng.random(rows) < 0.5).astype(np.float32)
    conv = np.where(mask == 1, rng.integers(0, 2, rows), 0).astype(np.float32)
    return pa.table({
        "row_id": pa.array(np.arange(first_row_id, first_row_id + rows, dtype=np.int64)),
        "d0": pa.array(rng.random(rows, dtype=np.float32)),
        "d1": pa.array(rng.standard_normal(rows, dtype=np.float32)),
        "v": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(3 * rows, dtype=np.float32)), 3),
        "a": pa.array(rng.integers(0, 10, rows, dtype=np.int64)),
        "b": pa.ListArray.from_arrays(pa.array(b_offsets), pa.array(rng.integers(0, 50, b_offsets[-1], dtype=np.int64)),
                                      mask=pa.array(~b_valid)),
        "h": pa.ListArray.from_arrays(pa.array(h_offsets),
                                      pa.array(rng.integers(0, 2**62, h_offsets[-1], dtype=np.int64))),
        "y_click": pa.array(rng.integers(0, 2, rows).astype(np.float32)),
        "y_conv": pa.array(conv, mask=mask == 0),  # null outside the task's sample space: allowed
        "m_conv": pa.array(mask),
        "y_value": pa.array(rng.standard_normal(rows).astype(np.float32)),
        "w": pa.array(rng.random(rows).astype(np.float32) + 0.5),
        "extra": pa.array(np.zeros(rows, dtype=np.int32)),  # not in the schema: must not be read
    })


def write_tiny_dataset(root: Path, mutate: Optional[Callable[[str, int, pa.Table], pa.Table]] = None) -> Path:
    """Write the tiny dataset under `root`; `mutate(split, file_index, table)` may corrupt one file."""
    root.mkdir(parents=True, exist_ok=True)
    first = 0
    for split, sizes in TINY_FILE_ROWS.items():
        (root / split).mkdir()
        for i, rows in enumerate(sizes):
            table = tiny_table(rows, first, seed=first)
            first += rows
            if mutate is not None:
                table = mutate(split, i, table)
            pq.write_table(table, root / split / f"part-{i:05d}.parquet", row_group_size=TINY_ROW_GROUP_ROWS)
    tiny_schema().save(root)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def make_tiny_dataset(tmp_path) -> Callable[..., Path]:
    """Builder for variants: make_tiny_dataset(mutate=...)."""
    counter = iter(range(1000))
    return lambda mutate=None: write_tiny_dataset(tmp_path / f"tiny{next(counter)}", mutate)
