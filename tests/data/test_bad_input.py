"""Bad input: each case gets an error naming the file, column and row group (or a counted policy)."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.typed_config import ConfigError
from pipeline.data.reader import ParquetBatchStream, make_loader
from pipeline.data.schema import DataError, DatasetSchema

from .conftest import TINY_FILE_ROWS


def _read_all(root, num_workers=0) -> int:
    schema = DatasetSchema.load(root)
    stream = ParquetBatchStream(schema, schema.split_paths("train"), 8, num_workers=num_workers)
    return sum(b.batch_size for b in make_loader(stream, num_workers))


def _replace(column: str, make, file_index: int = 0):
    """mutate(): in train file `file_index`, replace `column` by make(table) (an Arrow array)."""
    def mutate(split, i, table):
        if split != "train" or i != file_index:
            return table
        return table.set_column(table.schema.get_field_index(column), column, make(table))
    return mutate


def _with_value(column: str, row: int, value, dtype=pa.float32()):
    def make(table):
        values = table[column].to_pylist()
        values[row] = value
        return pa.array(values, type=table.schema.field(column).type if dtype is None else dtype)
    return _replace(column, make)


def _expect(root, *fragments, num_workers=0):
    with pytest.raises(Exception) as info:
        _read_all(root, num_workers)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


TRAIN0 = "train/part-00000.parquet"


def test_missing_column_names_file_and_column(make_tiny_dataset):
    root = make_tiny_dataset(lambda split, i, t: t.drop_columns(["d1"]) if (split, i) == ("train", 1) else t)
    with pytest.raises(DataError, match=r"part-00001\.parquet: missing column 'd1'"):
        _read_all(root)


def test_mistyped_column_names_file_column_and_types(make_tiny_dataset):
    root = make_tiny_dataset(_replace("d0", lambda t: t["d0"].cast(pa.float64())))
    with pytest.raises(DataError, match=r"part-00000\.parquet: column 'd0' has type double, expected float32"):
        _read_all(root)
    root = make_tiny_dataset(_replace("a", lambda t: t["a"].cast(pa.int32())))
    with pytest.raises(DataError, match=r"column 'a' has type int32, expected int64"):
        _read_all(root)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None])
def test_non_finite_or_null_dense_value(make_tiny_dataset, value):
    root = make_tiny_dataset(_with_value("d1", 12, value))
    _expect(root, TRAIN0, "row group 1", "column 'd1'", "first at row 2 of the row group")


def test_nan_inside_fixed_size_dense_list(make_tiny_dataset):
    def make(table):
        values = table["v"].combine_chunks().flatten().to_numpy().copy()
        values[3 * 25 + 1] = np.nan
        return pa.FixedSizeListArray.from_arrays(pa.array(values), 3)
    _expect(make_tiny_dataset(_replace("v", make)), TRAIN0, "row group 2", "column 'v'", "row 5 of the row group")


def test_nan_error_survives_a_dataloader_worker(make_tiny_dataset):
    root = make_tiny_dataset(_with_value("d0", 3, float("nan")))
    _expect(root, TRAIN0, "row group 0", "column 'd0'", num_workers=1)


@pytest.mark.parametrize("value", [2.0, -1.0, 0.5, None])
def test_binary_label_outside_domain_or_null(make_tiny_dataset, value):
    root = make_tiny_dataset(_with_value("y_click", 31, value))
    _expect(root, TRAIN0, "row group 3", "column 'y_click'", "outside {0, 1}")


def test_masked_binary_label_checked_only_inside_its_sample_space(make_tiny_dataset):
    def mask_row(value):
        def make(table):
            m = table["m_conv"].to_numpy().copy()
            m[4] = value
            return pa.array(m)
        return make

    def label_row(value):
        def make(table):
            y = table["y_conv"].to_pylist()
            y[4] = value
            return pa.array(y, pa.float32())
        return make

    def both(mask_value, label_value):
        return lambda s, i, t: _replace("y_conv", label_row(label_value))(s, i, _replace("m_conv", mask_row(mask_value))(s, i, t))

    assert _read_all(make_tiny_dataset(both(0.0, 7.0))) == 70  # outside the sample space: ignored
    _expect(make_tiny_dataset(both(1.0, 7.0)), "column 'y_conv'", "row group 0")
    _expect(make_tiny_dataset(both(1.0, None)), "column 'y_conv'")
    _expect(make_tiny_dataset(both(2.0, 1.0)), "column 'm_conv'", "outside {0, 1}")


@pytest.mark.parametrize("value", [None, float("nan")])
def test_regression_label_null_or_nan(make_tiny_dataset, value):
    _expect(make_tiny_dataset(_with_value("y_value", 0, value)), TRAIN0, "column 'y_value'", "regression")


def test_negative_or_null_weight(make_tiny_dataset):
    _expect(make_tiny_dataset(_with_value("w", 9, -1.0)), "column 'w'", "row 9 of the row group")
    _expect(make_tiny_dataset(_with_value("w", 9, None)), "column 'w'")


def test_negative_scalar_id(make_tiny_dataset):
    _expect(make_tiny_dataset(_with_value("a", 15, -3, pa.int64())), TRAIN0, "row group 1", "column 'a'",
            "negative ids")


def test_null_scalar_id(make_tiny_dataset):
    _expect(make_tiny_dataset(_with_value("a", 15, None, pa.int64())), "column 'a'", "null ids")


def test_scalar_id_outside_table_without_hashing(make_tiny_dataset):
    _expect(make_tiny_dataset(_with_value("a", 15, 10, pa.int64())), "column 'a'", "num_embeddings=10",
            "hashed: false")


def _list_with(row: int, ids):
    def make(table):
        lists = table["b"].to_pylist()
        lists[row] = ids
        return pa.array(lists, pa.list_(pa.int64()))
    return _replace("b", make)


def test_list_ids_negative_outside_table_or_null(make_tiny_dataset):
    _expect(make_tiny_dataset(_list_with(22, [1, -5])), "column 'b'", "negative ids", "row group 2",
            "first at row 2 of the row group")
    _expect(make_tiny_dataset(_list_with(22, [50])), "column 'b'", "num_embeddings=50", "row 2 of")
    _expect(make_tiny_dataset(_list_with(22, [3, None])), "column 'b'", "null ids")


def test_hashed_ids_must_still_be_non_negative(make_tiny_dataset):
    def make(table):
        lists = table["h"].to_pylist()
        lists[0] = [-1]
        return pa.array(lists, pa.list_(pa.int64()))
    _expect(make_tiny_dataset(_replace("h", make)), "column 'h'", "negative ids")


def test_null_key(make_tiny_dataset):
    _expect(make_tiny_dataset(_with_value("row_id", 0, None, pa.int64())), "column 'row_id'", "null key")


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_parquet"])
def test_empty_truncated_or_foreign_file_names_the_file(tiny_dataset, damage):
    path = tiny_dataset / "train" / "part-00001.parquet"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "not_parquet": b"row_id,d0\n1,2\n" * 50}[damage])
    with pytest.raises(DataError, match=re.escape(str(path))):
        _read_all(tiny_dataset)


def test_zero_row_parquet_file_is_skipped(tiny_dataset):
    schema = pq.read_schema(tiny_dataset / "train" / "part-00000.parquet")
    pq.write_table(schema.empty_table(), tiny_dataset / "train" / "part-00003.parquet")
    assert _read_all(tiny_dataset) == sum(TINY_FILE_ROWS["train"])


def test_only_empty_files_is_an_error(tmp_path):
    from pipeline.data.units import list_units
    from .conftest import tiny_table
    pq.write_table(tiny_table(1, 0, 0).slice(0, 0), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="no rows"):
        list_units([str(tmp_path / "e.parquet")])


def test_unknown_schema_key_names_the_key_path(tiny_dataset):
    path = tiny_dataset / "schema.yaml"
    text = path.read_text()
    path.write_text(text.replace("  hashed: true", "  hashd: true"))
    with pytest.raises(ConfigError, match=r"schema\.yaml: sparse\[2\]: unknown key\(s\) \['hashd'\]"):
        DatasetSchema.load(tiny_dataset)
    path.write_text(text + "shuffle: true\n")
    with pytest.raises(ConfigError, match=r"<root>: unknown key\(s\) \['shuffle'\]"):
        DatasetSchema.load(tiny_dataset)
