"""`mtrec prepare census` against docs/MATH.md §9 (uses the session-wide `census_dir` fixture)."""
from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.data.census import CATEGORICAL, CONTINUOUS, EDUCATION_DEFS, MONEY, prepare_census
from pipeline.data.census_raw import RAW_FILES, read_raw, shipped_raw_dir
from pipeline.data.schema import DataError, DatasetExistsError, DatasetSchema


@pytest.fixture(scope="module")
def census(census_dir):
    schema = DatasetSchema.load(census_dir)
    tables = {split: pa.concat_tables([pq.read_table(p) for p in schema.split_paths(split)])
              for split in ("train", "valid", "test")}
    return schema, tables


def test_row_counts_and_row_groups(census):
    schema, tables = census
    assert {s: t.num_rows for s, t in tables.items()} == {"train": 199_523, "valid": 49_881, "test": 49_881}
    assert {s: i.rows for s, i in schema.splits.items()} == {"train": 199_523, "valid": 49_881, "test": 49_881}
    meta = pq.read_metadata(schema.split_paths("train")[0])
    assert meta.num_row_groups == 49 and meta.row_group(0).num_rows == 4096
    assert meta.row_group(0).column(0).compression == "ZSTD" and meta.row_group(0).column(0).statistics is not None


def test_positive_rates_match_models_md(census):
    schema, tables = census
    train = {t: pc.mean(tables["train"][f"label_{t}"]).as_py() for t in ("income", "never_married", "education")}
    assert train["income"] == pytest.approx(0.0621, abs=5e-4)
    assert train["never_married"] == pytest.approx(0.433, abs=1e-3)
    assert train["education"] == pytest.approx(0.196, abs=1e-3)  # associates_plus (default)
    assert schema.splits["train"].positive_rates == pytest.approx(train)
    test_file_income = pc.mean(pa.concat_arrays([tables[s]["label_income"].combine_chunks() for s in ("valid", "test")]))
    assert test_file_income.as_py() == pytest.approx(0.0620, abs=5e-4)
    assert schema.prep["params"]["edu_def"] == "associates_plus"


def test_task_correlations_match_the_mmoe_groups(census):
    _, tables = census
    t = tables["train"]
    corr = lambda a, b: np.corrcoef(t[a].to_numpy(), t[b].to_numpy())[0, 1]  # noqa: E731
    assert abs(corr("label_income", "label_never_married")) == pytest.approx(0.178, abs=0.003)
    assert abs(corr("label_education", "label_never_married")) == pytest.approx(0.240, abs=0.003)


def test_education_definitions_on_the_raw_train_file():
    raw = read_raw(shipped_raw_dir() / RAW_FILES["data"])
    rates = {name: pc.mean(pc.is_in(raw["education"], value_set=pa.array(values)).cast(pa.float64())).as_py()
             for name, values in EDUCATION_DEFS.items()}
    assert rates == pytest.approx({"associates_plus": 0.196, "bachelors_plus": 0.148, "mmoeex_as_coded": 0.139}, abs=1e-3)
    assert "Associates degree-occup /vocational" in EDUCATION_DEFS["associates_plus"]


def test_split_indices_are_persisted_in_row_id(census):
    schema, tables = census
    np.testing.assert_array_equal(tables["train"]["row_id"].to_numpy(), np.arange(199_523))
    permutation = np.random.default_rng(0).permutation(99_762)
    np.testing.assert_array_equal(tables["valid"]["row_id"].to_numpy(), 199_523 + np.sort(permutation[:49_881]))
    np.testing.assert_array_equal(tables["test"]["row_id"].to_numpy(), 199_523 + np.sort(permutation[49_881:]))
    assert "permutation(99762)" in schema.prep["split_indices"]


def test_labels_never_leak_into_features(census):
    schema, tables = census
    features = [d.column for d in schema.dense] + [s.column for s in schema.sparse]
    assert len(features) == 38 and len(schema.dense) == 7
    assert not {"education", "marital_status", "income", "instance_weight"} & set(features)
    assert schema.weight is None and "instance_weight" in tables["train"].column_names  # kept, unused
    train = tables["train"]
    for task in schema.tasks:
        label = train[task.label].to_numpy()
        for column in features:  # no feature is the label or its complement
            values = train[column].to_numpy()
            assert not np.array_equal(values, label) and not np.array_equal(values, 1 - label)


def test_feature_encoding(census):
    schema, tables = census
    for split, table in tables.items():
        for column in CONTINUOUS:  # the default log1p_zscore: z-scores with the train moments
            values = table[column].to_numpy()
            assert values.dtype == np.float32 and np.isfinite(values).all()
            if split == "train":
                assert abs(values.mean()) < 1e-4 and values.std() == pytest.approx(1.0, abs=1e-4)
        for feature in schema.sparse:
            ids = table[feature.column].to_numpy()
            assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < feature.num_embeddings
            if split == "train":
                assert ids.min() >= 1  # 0 is reserved for values unseen in train
    assert {f.name for f in schema.sparse} == set(CATEGORICAL)
    assert {s.name: s.num_embeddings for s in schema.sparse}["sex"] == 3


def test_rerun_is_a_no_op_and_other_parameters_are_refused(census_dir):
    assert "up to date" in prepare_census(out=census_dir)
    with pytest.raises(DatasetExistsError, match="edu_def"):
        prepare_census(out=census_dir, edu_def="bachelors_plus")


def _fake_raw(directory, test_lines: list[str]):
    directory.mkdir()
    with gzip.open(shipped_raw_dir() / RAW_FILES["data"], "rt") as f:
        head = [next(f) for _ in range(200)]
    with gzip.open(directory / RAW_FILES["data"], "wt") as f:
        f.writelines(head)
    with gzip.open(directory / RAW_FILES["test"], "wt") as f:
        f.writelines(test_lines or head[:20])
    return head


def test_bad_raw_label_fails_without_leaving_output(tmp_path):
    head = _fake_raw(tmp_path / "raw", [])
    bad = head[:10] + [head[10].replace("- 50000.", "maybe.")]
    (tmp_path / "raw" / RAW_FILES["test"]).unlink()
    with gzip.open(tmp_path / "raw" / RAW_FILES["test"], "wt") as f:
        f.writelines(bad)
    with pytest.raises(DataError, match=r"census-income\.test\.gz: line 11, column 41"):
        prepare_census(out=tmp_path / "out", raw_dir=str(tmp_path / "raw"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no out, no temp directory


def test_unseen_test_values_map_to_zero(tmp_path):
    head = _fake_raw(tmp_path / "raw", [])
    unseen = head[0].split(", ")
    unseen[12] = "Other sex"
    (tmp_path / "raw" / RAW_FILES["test"]).unlink()
    with gzip.open(tmp_path / "raw" / RAW_FILES["test"], "wt") as f:
        f.writelines([", ".join(unseen)] * 4)
    prepare_census(out=tmp_path / "out", raw_dir=str(tmp_path / "raw"), row_group_rows=64)
    schema = DatasetSchema.load(tmp_path / "out")
    for split in ("valid", "test"):
        sex = pq.read_table(schema.split_paths(split), columns=["sex"])["sex"].to_numpy()
        assert (sex == 0).all() and len(sex) == 2


def test_log1p_zscore_features_use_train_moments(tmp_path):
    _fake_raw(tmp_path / "raw", [])
    args = {"out": tmp_path / "out", "raw_dir": str(tmp_path / "raw"), "row_group_rows": 64}
    prepare_census(**args)  # the default
    schema = DatasetSchema.load(tmp_path / "out")
    assert schema.prep["params"]["preprocess"] == "log1p_zscore"
    train = pq.read_table(schema.split_paths("train"))
    raw = read_raw(tmp_path / "raw" / RAW_FILES["data"])
    assert "dense_ranges" not in schema.prep and set(schema.prep["dense_moments"]) == set(CONTINUOUS)
    for column in CONTINUOUS:
        x = np.asarray(raw[column].to_pylist(), dtype=np.float64)
        expected = np.log1p(x) if column in MONEY else x
        mean, std = schema.prep["dense_moments"][column]
        assert (mean, std) == (pytest.approx(expected.mean()), pytest.approx(expected.std()))
        np.testing.assert_allclose(train[column].to_numpy(), (expected - mean) / (std or 1.0), rtol=1e-5, atol=1e-6)
    assert any(np.asarray(raw[c].to_pylist(), dtype=np.float64).max() > 0 for c in MONEY)  # log1p exercised
    with pytest.raises(DatasetExistsError, match="preprocess"):  # min-max features are another dataset
        prepare_census(**args, preprocess="mtrec")


def test_mtrec_features_are_min_max_scaled(tmp_path):
    _fake_raw(tmp_path / "raw", [])
    prepare_census(out=tmp_path / "out", raw_dir=str(tmp_path / "raw"), row_group_rows=64, preprocess="mtrec")
    schema = DatasetSchema.load(tmp_path / "out")
    assert "preprocess" not in schema.prep["params"]  # the parameters of min-max datasets made before the option
    for split in ("train", "valid", "test"):
        table = pq.read_table(schema.split_paths(split), columns=list(CONTINUOUS))
        for column in CONTINUOUS:
            values = table[column].to_numpy()
            assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
            low, high = schema.prep["dense_ranges"][column]
            if split == "train" and high > low:
                assert values.min() == 0 and values.max() == 1


def test_missing_raw_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="census-income.data.gz"):
        prepare_census(out=tmp_path / "out", raw_dir=str(tmp_path))


def test_the_encoding_digest_follows_the_features_not_the_split_or_labels(tmp_path):
    """Same raw files and preprocessing: the same digest (another seed or education label changes no
    feature); another preprocessing: another digest, so a model is not scored on the wrong features."""
    _fake_raw(tmp_path / "raw", [])
    digests = {}
    for name, extra in {"default": {}, "seed_1": {"seed": 1}, "bachelors": {"edu_def": "bachelors_plus"},
                        "min_max": {"preprocess": "mtrec"}}.items():
        prepare_census(out=tmp_path / name, raw_dir=str(tmp_path / "raw"), row_group_rows=64, **extra)
        digests[name] = DatasetSchema.load(tmp_path / name).encoding
    assert digests["default"] == digests["seed_1"] == digests["bachelors"] != digests["min_max"]
    assert len(digests["default"]) == 64
