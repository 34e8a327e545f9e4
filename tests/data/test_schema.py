"""schema.yaml: round trip, what the trainer calls, validation, the documented id hash, re-run policy."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.inputs import SparseFeature, Task
from models.typed_config import ConfigError
from pipeline.data.schema import (DatasetExistsError, DatasetSchema, SparseColumn, TaskColumn, existing_dataset,
                                  hash_ids_into_range, splitmix64)

from .conftest import tiny_schema


def test_save_load_round_trip(tmp_path):
    schema = tiny_schema()
    schema.save(tmp_path)
    loaded = DatasetSchema.load(tmp_path)
    assert loaded.root == str(tmp_path)
    assert dataclasses.replace(loaded, root=None) == schema
    assert "root" not in (tmp_path / "schema.yaml").read_text()


def test_input_spec_and_projection():
    schema = tiny_schema()
    spec = schema.input_spec()
    assert spec.dense_dim == 5
    assert spec.sparse_features == (SparseFeature("a", 10, 8, "sum"), SparseFeature("b", 50, 8, "mean"),
                                    SparseFeature("h", 7, 8, "sum"))
    assert spec.tasks == (Task("click", "binary", 1.0), Task("conv", "binary", 1.0), Task("value", "regression", 0.5))
    assert schema.columns() == ["row_id", "d0", "d1", "v", "a", "b", "h", "y_click", "y_conv", "y_value", "m_conv", "w"]
    assert "row_id" not in schema.columns(with_keys=False)


def test_split_paths_sorted_and_errors(tiny_dataset):
    schema = DatasetSchema.load(tiny_dataset)
    paths = schema.split_paths("train")
    assert paths == sorted(paths) and len(paths) == 3
    with pytest.raises(ValueError, match="unknown split"):
        schema.split_paths("dev")
    (tiny_dataset / "test" / "part-00000.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="test"):
        schema.split_paths("test")


@pytest.mark.parametrize("change,message", [
    (lambda s: dataclasses.replace(s, sparse=s.sparse + (SparseColumn(name="a", column="a2", num_embeddings=3),)),
     "duplicate name"),
    (lambda s: dataclasses.replace(s, tasks=s.tasks + (TaskColumn(name="leak", label="d0"),)), "also key or feature"),
    (lambda s: dataclasses.replace(s, tasks=()), "at least one task"),
    (lambda s: dataclasses.replace(s, format_version=2), "format_version"),
])
def test_semantic_validation(tmp_path, change, message):
    change(tiny_schema()).save(tmp_path)
    with pytest.raises(ConfigError, match=message):
        DatasetSchema.load(tmp_path)


@pytest.mark.parametrize("old,new,message", [
    ("pooling: mean", "pooling: max", r"sparse\[1\]\.pooling: 'max' is not one of"),
    ("num_embeddings: 10", "num_embeddings: 0", r"sparse\[0\]\.num_embeddings: must be >= 1"),
    ("dim: 3", "dim: three", r"dense\[2\]\.dim"),
    ("kind: regression", "kind: ranking", r"tasks\[2\]\.kind"),
])
def test_typed_errors_name_the_key_path(tiny_dataset, old, new, message):
    path = tiny_dataset / "schema.yaml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        DatasetSchema.load(tiny_dataset)


def test_root_is_not_a_schema_key(tiny_dataset):
    path = tiny_dataset / "schema.yaml"
    path.write_text(path.read_text() + "root: /elsewhere\n")
    with pytest.raises(ConfigError, match="root"):
        DatasetSchema.load(tiny_dataset)


def _splitmix64_reference(x: int) -> int:
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_documented_id_hash():
    ids = np.array([0, 1, 2, 12345, 2**40 + 7, 2**63 - 1], dtype=np.int64)
    expected = [_splitmix64_reference(int(i)) for i in ids]
    assert splitmix64(ids).tolist() == expected
    assert hash_ids_into_range(ids, 1000).tolist() == [e % 1000 for e in expected]
    spread = hash_ids_into_range(np.arange(100_000, dtype=np.int64), 10)
    assert spread.dtype == np.int64 and set(np.unique(spread)) == set(range(10))
    assert np.bincount(spread).min() > 9_500  # roughly uniform


def test_existing_dataset_policy(tiny_dataset, tmp_path):
    assert existing_dataset(tmp_path / "absent", {"a": 1}, overwrite=False) is None
    other = tmp_path / "not_a_dataset"
    other.mkdir()
    with pytest.raises(DatasetExistsError, match="not an mtrec dataset"):
        existing_dataset(other, {}, overwrite=False)
    schema = DatasetSchema.load(tiny_dataset)
    dataclasses.replace(schema, prep={"params": {"seed": 1, "sizes": [1, 2]}}).save(tiny_dataset)
    assert existing_dataset(tiny_dataset, {"seed": 1, "sizes": (1, 2)}, overwrite=False) is not None
    with pytest.raises(DatasetExistsError, match="seed differ"):
        existing_dataset(tiny_dataset, {"seed": 2, "sizes": (1, 2)}, overwrite=False)
    assert existing_dataset(tiny_dataset, {"seed": 2}, overwrite=True) is None
    assert issubclass(DatasetExistsError, ValueError)  # the CLI reports it as bad input
