"""`mtrec prepare census --preprocess mmoeex|mmoeex_aligned`: the MMoEEx-MTL one-hot preparation,
as run (valid/test one-hot positions shifted past the category the test file lacks) and fixed."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.census import prepare_census
from pipeline.data.census_raw import RAW_FILES, read_raw, shipped_raw_dir
from pipeline.data.census_mmoeex import CATEGORICAL, ONEHOT, MMoEExEncoder, dummy_columns
from pipeline.data.schema import DataError, DatasetSchema

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """{preprocess: (schema, {split: table})} for both variants."""
    root = tmp_path_factory.mktemp("mmoeex")
    out = {}
    for preprocess in ("mmoeex", "mmoeex_aligned"):
        prepare_census(out=root / preprocess, edu_def="mmoeex_as_coded", preprocess=preprocess)
        schema = DatasetSchema.load(root / preprocess)
        out[preprocess] = schema, {s: pq.read_table(schema.split_paths(s)) for s in SPLITS}
    return out


@pytest.fixture(scope="module")
def encoder():
    raw = {k: read_raw(shipped_raw_dir() / RAW_FILES[k]) for k in ("data", "test")}
    return MMoEExEncoder(raw["data"], raw["test"], "mmoeex")


def onehot_ids(table: pa.Table) -> np.ndarray:
    column = table[ONEHOT].combine_chunks()
    assert (np.diff(column.offsets.to_numpy()) == len(CATEGORICAL)).all()
    return column.values.to_numpy().reshape(-1, len(CATEGORICAL))


def test_the_one_training_column_the_test_file_lacks_is_the_one_mmoeex_appends(prepared, encoder):
    schema, _ = prepared["mmoeex"]
    assert len(encoder.train_columns) == 471 == schema.sparse[0].num_embeddings
    assert encoder.missing_in_test == [("detailed_household_and_family_stat",
                                        "Grandchild <18 ever marr not in subfamily")]
    assert schema.prep["mmoeex"]["valid_test_onehot_shifted"] is True
    assert len(schema.dense) == 11 and "instance_weight" in [d.column for d in schema.dense]


def test_as_run_shifts_valid_test_positions_past_the_missing_column_only(prepared, encoder):
    as_run, aligned = (prepared[p][1] for p in ("mmoeex", "mmoeex_aligned"))
    missing = encoder.train_ids[encoder.missing_in_test[0]]
    np.testing.assert_array_equal(onehot_ids(as_run["train"]), onehot_ids(aligned["train"]))
    for split in ("valid", "test"):
        fixed, shifted = onehot_ids(aligned[split]), onehot_ids(as_run[split])
        np.testing.assert_array_equal(shifted, fixed - (fixed > missing))
        assert (shifted != fixed).any(axis=1).mean() > 0.99  # household summary, migration, countries...


def test_aligned_ids_decode_to_the_raw_categories(prepared, encoder):
    _, tables = prepared["mmoeex_aligned"]
    raw = read_raw(shipped_raw_dir() / RAW_FILES["data"])
    ids = onehot_ids(tables["train"])
    for block, column in enumerate(CATEGORICAL[:3]):
        decoded = [encoder.train_columns[i] for i in ids[:50, block]]
        assert decoded == [(column, v) for v in raw[column][:50].to_pylist()]


def test_scaling_uses_each_files_own_range(prepared):
    _, tables = prepared["mmoeex"]
    other = pa.concat_tables([tables["valid"], tables["test"]])
    for table in (tables["train"], other):  # the test file is scaled with its own min/max, unclipped
        for column in ("age", "instance_weight", "capital_gains"):
            values = table[column].to_numpy()
            assert values.min() == 0.0 and values.max() == pytest.approx(1.0)


def test_integer_coded_categories_sort_numerically():
    table = pa.table({c: pa.array(["1"] * 3) for c in CATEGORICAL})
    table = table.set_column(CATEGORICAL.index("industry_code"), "industry_code", pa.array(["10", "9", "0"]))
    industry = [v for c, v in dummy_columns(table) if c == "industry_code"]
    assert industry == ["0", "9", "10"]  # pandas reads the column as int64
    with pytest.raises(DataError, match="'occupation_code'.*'x'"):
        dummy_columns(table.set_column(CATEGORICAL.index("occupation_code"), "occupation_code", pa.array(["x"] * 3)))
