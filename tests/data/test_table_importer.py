"""`mtrec prepare table` on a small generated CSV with the hard cases, checked against hand-computed values.

The CSV (written here, not shipped) has string ids with nulls (hashed), a categorical with nulls and a
rare value (vocabulary, min_count 2), a delimited multi-hot column with empty tokens, dense columns
with nulls (train-mean fill + log1p + z-score; constant fill + min-max), a bucketized column, a
conversion task masked by click, and a time split.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 (pa.csv)
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.data.schema import DataError, DatasetSchema
from pipeline.data.table.importer import prepare_table
from pipeline.data.table.readers import InputFile, read_batches
from pipeline.data.table.spec import InputsSpec
from pipeline.data.table.values import as_numbers

HEADER = "ts,user,city,tags,price,age,click,purchase"
ROWS = [  # train: ts < 2024-01-08, valid: 2024-01-08, test: >= 2024-01-09
    "2024-01-01,u1,paris,a|b,10,20,1,1",
    "2024-01-02,u2,,b,,30,0,",
    "2024-01-03,u1,rome,a|c|a,0,,1,0",
    "2024-01-04,u3,paris,,100,40,0,",
    "2024-01-05,u2,paris,c,5,50,1,1",
    "2024-01-06,,rome,a,1,60,0,0",
    "2024-01-07,u4,oslo,b|,3,25,1,0",
    "2024-01-08,u1,paris,d,7,35,1,1",
    "2024-01-08,u5,lima,a,,45,0,",
    "2024-01-09,u2,rome,b|d,2,99,1,0",
    "2024-01-10,u9,paris,,4,10,0,",
]
SPLIT_LINES = {"train": range(0, 7), "valid": range(7, 9), "test": range(9, 11)}

SPEC = {
    "name": "hard",
    "inputs": {"files": ["log.csv"]},
    "splits": {"method": "time", "column": "ts", "cutoffs": {"valid": "2024-01-08", "test": "2024-01-09"}},
    "dense": [
        {"name": "price", "fill": "mean", "transform": ["log1p", "zscore"]},
        {"name": "age", "fill": 30, "transform": ["minmax"]},
    ],
    "categorical": [
        {"name": "user", "encoding": "hash", "buckets": 1000},
        {"name": "city", "encoding": "vocab", "min_count": 2},
        {"name": "tags", "encoding": "vocab", "multi_hot": True, "separator": "|", "pooling": "mean"},
        {"name": "age_band", "column": "age", "encoding": "bucketize", "boundaries": [30, 50]},
    ],
    "tasks": [
        {"name": "click", "label": {"column": "click", "equals": 1}},
        {"name": "buy", "label": {"column": "purchase", "equals": 1}, "mask": {"column": "click", "equals": 1}},
    ],
    "row_group_rows": 2,
    "file_rows": 4,
}


def reference_hash(text: str) -> int:
    """Pure-Python FNV-1a 64 then SplitMix64's output function (docs/DATA.md), independent of numpy."""
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    z = (h + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def write_spec(directory: Path, spec: dict) -> Path:
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture()
def hard_csv(tmp_path) -> Path:
    (tmp_path / "log.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    return write_spec(tmp_path, SPEC)


def read_split(out: Path, split: str) -> dict:
    return pq.read_table(sorted((out / split).glob("*.parquet"))).to_pydict()


def test_hard_cases_match_hand_computed_values(hard_csv, tmp_path):
    out = tmp_path / "ds"
    summary = prepare_table(hard_csv, out)
    schema = DatasetSchema.load(out)
    data = {s: read_split(out, s) for s in SPLIT_LINES}
    for split, lines in SPLIT_LINES.items():
        assert data[split]["row_id"] == list(lines)  # no key column: row_id = data row index

    # user: hash into 1000 buckets, id = 1 + h mod 1000, null -> 0
    users = [r.split(",")[1] for r in ROWS]
    want = [1 + reference_hash(u) % 1000 if u else 0 for u in users]
    got = sum((data[s]["user"] for s in SPLIT_LINES), [])
    assert got == want
    assert schema.sparse[0].num_embeddings == 1001

    # city: train counts paris 3, rome 2, oslo 1 -> vocabulary [paris, rome] (ids 2, 3); oslo/lima OOV (1); null 0
    assert data["train"]["city"] == [2, 0, 3, 2, 2, 3, 1]
    assert data["valid"]["city"] == [2, 1] and data["test"]["city"] == [3, 2]
    # tags: vocabulary [a, b, c] -> 2, 3, 4; d unseen -> 1; empty tokens and empty strings dropped
    assert data["train"]["tags"] == [[2, 3], [3], [2, 4, 2], [], [4], [2], [3]]
    assert data["valid"]["tags"] == [[1], [2]] and data["test"]["tags"] == [[3, 1], []]
    # age_band: boundaries [30, 50] -> 1 + number of boundaries <= age; null -> 0
    assert data["train"]["age_band"] == [1, 2, 0, 2, 3, 3, 1]
    assert data["test"]["age_band"] == [3, 1]

    # price: fill = mean of the 6 train values, then sign*log1p, then z-score with the train mean/std
    raw = np.array([10, np.nan, 0, 100, 5, 1, 3], float)
    fill = np.nanmean(raw)
    logged = np.log1p(np.where(np.isnan(raw), fill, raw))
    mean, std = logged.mean(), logged.std()
    np.testing.assert_allclose(data["train"]["price"], (logged - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(data["valid"]["price"], (np.log1p([7, fill]) - mean) / std, rtol=1e-6)
    # age: null -> 30, min-max with train min 20 / max 60, other splits clipped to [0, 1]
    np.testing.assert_allclose(data["train"]["age"], np.array([20, 30, 30, 40, 50, 60, 25]) / 40 - 0.5)
    np.testing.assert_allclose(data["test"]["age"], [1.0, 0.0])

    # tasks: click as is; buy masked by click == 1 (label 0 where the mask is 0)
    assert data["train"]["label_click"] == [1, 0, 1, 0, 1, 0, 1]
    assert data["train"]["mask_buy"] == [1, 0, 1, 0, 1, 0, 1]
    assert data["train"]["label_buy"] == [1, 0, 0, 0, 1, 0, 0]
    assert schema.splits["train"].positive_rates == {"click": 4 / 7, "buy": 2 / 4}

    # fitted statistics saved for a later import; the summary counts what was filled and unseen
    fitted = schema.prep["fitted"]
    assert fitted["dense"]["price"]["fill"] == pytest.approx(fill)
    ages = np.array([20, 30, 30, 40, 50, 60, 25.0])
    assert fitted["dense"]["age"] == {"fill": 30.0, "mean": pytest.approx(ages.mean()),
                                      "std": pytest.approx(ages.std()), "min": 20.0, "max": 60.0}
    assert pq.read_table(out / "vocab" / "city.parquet").to_pydict() == {"value": ["paris", "rome"], "count": [3, 2]}
    counts = schema.prep["summary"]
    assert counts["nulls_filled"] == {"price": {"train": 1, "valid": 1, "test": 0},
                                      "age": {"train": 1, "valid": 0, "test": 0}}
    assert counts["vocabulary"]["city"] == {"size": 2, "oov_rate": {"train": 1 / 6, "valid": 0.5, "test": 0.0}}
    assert counts["vocabulary"]["tags"]["oov_rate"]["test"] == 0.5
    assert counts["mask_rate"]["buy"]["train"] == 4 / 7
    assert "nulls filled price: train 1, valid 1, test 0" in summary
    assert "vocabulary city: 2 values; out-of-vocabulary rate train 16.667%" in summary


def test_the_reader_accepts_the_dataset(hard_csv, tmp_path):
    """Types, row groups and values pass the reader's contract checks (pipeline/data/reader.py)."""
    from pipeline.data.reader import ParquetBatchStream

    out = tmp_path / "ds"
    prepare_table(hard_csv, out)
    train = pq.ParquetFile(sorted((out / "train").glob("*.parquet"))[0])
    assert [train.metadata.row_group(g).num_rows for g in range(train.num_row_groups)] == [2, 2]  # file_rows 4
    schema = DatasetSchema.load(out)
    batches = list(ParquetBatchStream(schema, schema.split_paths("train"), batch_size=7))
    assert len(batches) == 1 and batches[0].dense.shape == (7, 2)
    assert batches[0].labels.tolist() == [[1, 1], [0, 0], [1, 0], [0, 0], [1, 1], [0, 0], [1, 0]]
    assert batches[0].masks[:, 1].tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert batches[0].sparse_features["tags"].lengths().tolist() == [2, 1, 3, 0, 1, 1, 1]


def test_same_dataset_from_parquet_jsonl_and_tiny_blocks(hard_csv, tmp_path):
    """Parquet (typed ints/floats, list column) and JSON lines give the CSV's dataset, and so does
    streaming the CSV in many tiny blocks (the fitters merge across batches)."""
    reference = tmp_path / "csv"
    prepare_table(hard_csv, reference)
    names = HEADER.split(",")
    cells = [r.split(",") for r in ROWS]
    columns = {n: [c[i] or None for c in cells] for i, n in enumerate(names)}
    num = {n: [float(v) if v is not None else None for v in columns[n]] for n in ("price", "age")}
    table = pa.table({**columns, **num, "click": pa.array([int(v) for v in columns["click"]]),
                      "purchase": pa.array([int(v) if v else None for v in columns["purchase"]]),
                      "tags": [[t for t in v.split("|")] if v else None for v in columns["tags"]]})
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=3)
    with open(tmp_path / "log.jsonl", "w") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row) + "\n")
    variants = {"parquet": {"files": ["log.parquet"]}, "jsonl": {"files": ["log.jsonl"]},
                "blocks": {"files": ["log.csv"], "block_bytes": 100}}  # a batch of 1-2 lines
    want = {s: read_split(reference, s) for s in SPLIT_LINES}
    for name, inputs in variants.items():
        spec = dict(SPEC, inputs=inputs)
        prepare_table(write_spec(tmp_path, spec), tmp_path / name)
        got = {s: read_split(tmp_path / name, s) for s in SPLIT_LINES}
        assert got == want, name


def test_hash_split_is_stable_and_carves_only_the_train_files(tmp_path):
    rows = 2000
    lines = ["id,x,y"] + [f"k{i},{i % 7},{i % 2}" for i in range(rows)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(lines[:101]) + "\n")
    spec = {"name": "h", "inputs": {"files": {"train": ["train.csv"], "test": ["test.csv"]}},
            "splits": {"method": "hash", "column": "id", "fractions": {"valid": 0.2}},
            "dense": [{"name": "x"}], "tasks": [{"name": "y", "label": {"column": "y"}}]}
    prepare_table(write_spec(tmp_path, spec), tmp_path / "a")
    schema = DatasetSchema.load(tmp_path / "a")
    assert schema.splits["test"].rows == 100
    valid = set(read_split(tmp_path / "a", "valid")["row_id"])
    assert abs(len(valid) - 0.2 * rows) < 4 * math.sqrt(rows * 0.2 * 0.8)
    draws = {i for i in range(rows) if (reference_hash(f"k{i}") >> 11) / 2**53 < 0.2}
    assert valid == draws  # the documented draw, key by key


def test_reuse_stats_encodes_new_logs_like_the_first_import(hard_csv, tmp_path):
    first = tmp_path / "first"
    prepare_table(hard_csv, first)
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    (new_dir / "log.csv").write_text("\n".join([HEADER, ROWS[7], ROWS[0], ROWS[9]]) + "\n")
    spec = dict(SPEC, splits={"method": "files"}, inputs={"files": {"train": ["log.csv"]}})
    prepare_table(write_spec(new_dir, spec), tmp_path / "second", reuse_stats=str(first))
    got = read_split(tmp_path / "second", "train")
    old = {s: read_split(first, s) for s in SPLIT_LINES}
    for column in ("city", "tags", "price", "age", "user"):
        assert got[column] == [old["valid"][column][0], old["train"][column][0], old["test"][column][0]], column


def test_vocabulary_counting_merges_exactly_across_batches():
    from pipeline.data.table.transforms import VocabCounter

    rng = np.random.default_rng(0)
    values = rng.integers(0, 300_000, size=1_000_000)
    counter = VocabCounter()
    for start in range(0, len(values), 50_000):
        distinct, counts = np.unique(values[start:start + 50_000], return_counts=True)
        counter.update(pa.array([f"v{v}" for v in distinct]), counts)
        held = sum(part.num_rows for part in counter._parts)
        assert held <= 3 * 300_000 + (1 << 16) + 50_000  # merged lazily: memory ~ distinct values, not rows
    vocabulary = counter.finish(min_count=5)
    distinct, counts = np.unique(values, return_counts=True)
    want = sorted(f"v{v}" for v, n in zip(distinct, counts) if n >= 5)
    assert vocabulary.values.to_pylist() == want


MEMORY_PROBE = """
import sys, pyarrow as pa
from pipeline.data.table.importer import prepare_table
prepare_table(sys.argv[1], sys.argv[2])
print(pa.default_memory_pool().max_memory())
"""


def test_peak_arrow_memory_does_not_grow_with_the_file(tmp_path):
    """Streaming: a 96 MB and a 192 MB CSV are imported with about the same peak Arrow memory, well
    below the file size (pyarrow's CSV reader reads up to ~36 blocks ahead, then a few batches are
    in flight; docs/BENCHMARKS.md measures the process RSS from 1M to 10M rows)."""
    import subprocess
    import sys

    from tests.conftest import REPO, job_env

    rows = 100_000
    rng = np.random.default_rng(0)
    table = pa.table({"id": pa.array([f"u{v}" for v in rng.integers(0, 1000, rows)]), "x": rng.random(rows),
                      "y": (rng.random(rows) < 0.3).astype(np.int8), "note": pa.array(["n" * 450] * rows)})
    pa.csv.write_csv(table, tmp_path / "one.csv")
    text = (tmp_path / "one.csv").read_bytes()
    body = text[text.index(b"\n") + 1:]
    (tmp_path / "two.csv").write_bytes(text + body)  # the rows twice
    (tmp_path / "four.csv").write_bytes(text + 3 * body)
    peaks, sizes = [], []
    for name in ("two", "four"):
        spec = {"name": "m", "inputs": {"files": [f"{name}.csv"]},
                "splits": {"method": "hash", "fractions": {"valid": 0.1}},
                "dense": [{"name": "x", "transform": ["zscore"]}], "categorical": [{"name": "id"}],
                "tasks": [{"name": "y", "label": {"column": "y"}}], "drop": ["note"]}
        proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(write_spec(tmp_path, spec)),
                               str(tmp_path / f"ds_{name}")], cwd=REPO, env=job_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        peaks.append(int(proc.stdout.split()[-1]))
        sizes.append((tmp_path / f"{name}.csv").stat().st_size)
    assert peaks[1] < 1.3 * peaks[0] and peaks[1] < 0.4 * sizes[1], (peaks, sizes)


def test_json_lines_whose_blocks_change_types_and_keys(tmp_path):
    """Integers then doubles in a dense column, nulls then text in a categorical, a key that first
    appears late: pyarrow's streaming JSON reader fixes types after block 1; the importer's explicit
    schema does not."""
    rows = [{"x": i, "c": None, "y": i % 2} for i in range(3000)]
    rows += [{"x": i + 0.5, "c": f"v{i % 3}", "y": i % 2, "late": 1} for i in range(3000)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "j", "inputs": {"files": ["log.jsonl"], "block_bytes": 4096},
            "splits": {"method": "hash", "fractions": {"valid": 0.1}},
            "dense": [{"name": "x"}], "categorical": [{"name": "c"}], "tasks": [{"name": "y", "label": {"column": "y"}}]}
    prepare_table(write_spec(tmp_path, spec), tmp_path / "ds")
    schema = DatasetSchema.load(tmp_path / "ds")
    assert schema.prep["summary"]["rows_read"] == 6000
    assert schema.prep["summary"]["vocabulary"]["c"]["size"] == 3
    data = [read_split(tmp_path / "ds", s) for s in ("train", "valid")]
    x = sorted(v for d in data for v in d["x"])
    assert x == sorted(list(range(3000)) + [i + 0.5 for i in range(3000)])
    assert set(data[0]["c"]) == {0, 2, 3, 4}  # null, then v0 v1 v2


def test_reader_thread_casts_clean_counters_and_leaves_bad_ones_to_the_encoder(tmp_path):
    """The reader casts numeric text columns ahead (RawBatch.numbers); a column with text that is no
    number is not cast there, so `as_numbers` still finds and names the bad line."""
    csv = tmp_path / "log.csv"
    csv.write_text("a,b,c\n1,2,x\n,3.5,y\n4,oops,z\n")
    spec = InputsSpec(files=[str(csv)])
    (batch,) = read_batches(InputFile(str(csv), None, "csv", 1), spec, ["a", "b", "c"], frozenset({"a", "b"}))
    assert set(batch.numbers) == {"a"}
    np.testing.assert_array_equal(as_numbers(batch, "a")[0], [1.0, np.nan, 4.0])
    with pytest.raises(DataError, match=r"log.csv: line 4, column 'b': not a number: 'oops'"):
        as_numbers(batch, "b")


def test_an_unquoted_yes_in_a_hand_written_spec_matches_the_text_yes(tmp_path):
    """YAML 1.1 would make `equals: yes` the boolean True; mtrec reads it as the text a log holds."""
    lines = ["id,x,subscribed"] + [f"k{i},{i},{'yes' if i % 3 == 0 else 'no'}" for i in range(30)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: yn\ninputs: {files: {train: [log.csv], test: [log.csv]}}\n"
                    "splits: {method: hash, column: id, fractions: {valid: 0.2}}\n"
                    "dense: [{name: x}]\n"
                    "tasks:\n  - {name: subscribed, label: {column: subscribed, equals: yes}}\n")
    prepare_table(spec, tmp_path / "ds")
    test = read_split(tmp_path / "ds", "test")
    assert test["label_subscribed"] == [float(i % 3 == 0) for i in range(30)]


def test_unquoted_dates_as_time_cutoffs_give_the_same_dataset(hard_csv, tmp_path):
    """A hand-written `cutoffs: {valid: 2024-01-08}` is the text of the date (YAML 1.1: a date object)."""
    text = hard_csv.read_text()
    assert "'2024-01-08'" in text
    unquoted = tmp_path / "unquoted" / "spec.yaml"
    unquoted.parent.mkdir()
    unquoted.write_text(text.replace("'2024-01-08'", "2024-01-08").replace("'2024-01-09'", "2024-01-09"))
    (unquoted.parent / "log.csv").write_text((tmp_path / "log.csv").read_text())
    prepare_table(hard_csv, tmp_path / "quoted_ds")
    prepare_table(unquoted, tmp_path / "unquoted_ds")
    for split in SPLIT_LINES:
        assert read_split(tmp_path / "unquoted_ds", split) == read_split(tmp_path / "quoted_ds", split)


def test_reused_statistics_keep_the_encoding_digest_and_a_fresh_fit_changes_it(hard_csv, tmp_path):
    first = tmp_path / "first"
    prepare_table(hard_csv, first)
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    (new_dir / "log.csv").write_text("\n".join([HEADER, ROWS[7], ROWS[1], ROWS[9], ROWS[3]]) + "\n")
    renamed = [dict(f, column=f.get("column", f["name"])) for f in SPEC["dense"]]  # the source spelled out
    spec = write_spec(new_dir, dict(SPEC, dense=renamed, splits={"method": "files"},
                                    inputs={"files": {"train": ["log.csv"]}}))
    prepare_table(spec, tmp_path / "reused", reuse_stats=str(first))
    prepare_table(spec, tmp_path / "refit")
    digest = {name: DatasetSchema.load(tmp_path / name).encoding for name in ("first", "reused", "refit")}
    assert digest["first"] == digest["reused"] != digest["refit"]
    with pytest.raises(DataError, match=r"encoded differently .* --reuse-stats TRAINING_DATASET"):
        DatasetSchema.load(tmp_path / "refit").check_encoded_like(DatasetSchema.load(first))
    DatasetSchema.load(tmp_path / "reused").check_encoded_like(DatasetSchema.load(first))
