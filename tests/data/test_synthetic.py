"""The MMoE synthetic generator (docs/MATH.md §8) and its streaming writer."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data.reader import ParquetBatchStream
from pipeline.data.schema import DatasetSchema
from pipeline.data.synthetic import SyntheticGenerator, SyntheticSpec, prepare_synthetic

SMALL = dict(dense_dim=8, sparse_features=2, vocab=1000, chunk_rows=500, calibration_rows=2000)


def _cos(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("p", [-0.5, 0.0, 0.3, 1.0])
def test_task_directions_have_cosine_p(p):
    w = SyntheticGenerator(SyntheticSpec(rows=1, correlation=p, dense_dim=32, sparse_features=0)).geometry.w
    assert _cos(w[0], w[1]) == pytest.approx(p, abs=1e-12)
    assert np.linalg.norm(w, axis=1) == pytest.approx([1.0, 1.0])


def test_more_than_two_tasks_geometry():
    w = SyntheticGenerator(SyntheticSpec(rows=1, tasks=4, correlation=0.6, dense_dim=16, sparse_features=0)).geometry.w
    for t in range(1, 4):
        assert _cos(w[0], w[t]) == pytest.approx(0.6, abs=1e-12)
        for s in range(1, t):
            assert _cos(w[s], w[t]) == pytest.approx(0.36, abs=1e-12)


def _label_correlation(**spec) -> float:
    generator = SyntheticGenerator(SyntheticSpec(dense_dim=16, sparse_features=0, chunk_rows=50_000, **spec))
    y = np.concatenate([generator.chunk(j).y for j in range(generator.spec.num_chunks)])
    return float(np.corrcoef(y[:, 0], y[:, 1])[0, 1])


def test_pearson_without_sin_terms_is_p_c2_over_c2_plus_sigma2():
    assert _label_correlation(rows=200_000, correlation=0.5, sin_terms=0) == pytest.approx(0.5 / 1.01, abs=0.006)


def test_correlation_with_sin_terms_grows_with_p():
    corrs = [_label_correlation(rows=100_000, correlation=p, seed=1) for p in (0.2, 0.5, 0.9)]
    assert corrs[0] < corrs[1] < corrs[2]


def test_small_round_trip(tmp_path):
    spec = SyntheticSpec(rows=3000, regression=True, row_group_rows=256, **SMALL)
    summary = prepare_synthetic(spec, out=tmp_path / "syn")
    assert "train: 2,400 rows" in summary
    schema = DatasetSchema.load(tmp_path / "syn")
    assert [t.name for t in schema.tasks] == ["t1", "t2", "t1_value"] and schema.dense_dim == 8
    assert all(s.hashed and s.num_embeddings == 1000 and s.layout == "list" for s in schema.sparse)
    assert {s: i.rows for s, i in schema.splits.items()} == {"train": 2400, "valid": 300, "test": 300}
    assert schema.prep["chunk_rows"] == 500 and schema.prep["noise_std"] == 0.1

    generator = SyntheticGenerator(spec)
    y = np.concatenate([generator.chunk(j).y for j in range(spec.num_chunks)])
    x = np.concatenate([generator.chunk(j).x for j in range(spec.num_chunks)])
    thresholds = np.array(list(schema.prep["binary_thresholds"].values()))
    stream = ParquetBatchStream(schema, schema.split_paths("train") + schema.split_paths("valid")
                                + schema.split_paths("test"), 128)
    batches = list(stream)
    order = np.argsort(torch.cat([b.keys for b in batches]).numpy())  # files are read in path order
    np.testing.assert_array_equal(torch.cat([b.keys for b in batches]).numpy()[order], np.arange(3000))
    labels = torch.cat([b.labels for b in batches]).numpy()[order]
    np.testing.assert_array_equal(labels[:, :2], (y > thresholds).astype(np.float32))
    np.testing.assert_allclose(labels[:, 2], y[:, 0].astype(np.float32))
    np.testing.assert_array_equal(torch.cat([b.dense for b in batches]).numpy()[order], x)
    assert 0.4 < labels[:, 0].mean() < 0.6  # median threshold
    ids = torch.cat([b.sparse_features.values() for b in batches])
    assert ids.min() >= 0 and ids.max() < 1000
    assert stream.stats.empty_lists["s0"] > 0  # Poisson(3) lengths: ~5% empty lists, counted


def test_output_does_not_depend_on_the_write_layout(tmp_path):
    a = SyntheticSpec(rows=2100, row_group_rows=100, row_groups_per_file=3, **SMALL)
    b = SyntheticSpec(rows=2100, row_group_rows=700, row_groups_per_file=1, **SMALL)
    for name, spec in (("a", a), ("b", b)):
        prepare_synthetic(spec, out=tmp_path / name)
    for split in ("train", "valid", "test"):
        files_a = DatasetSchema.load(tmp_path / "a").split_paths(split)
        files_b = DatasetSchema.load(tmp_path / "b").split_paths(split)
        assert pq.read_table(files_a).equals(pq.read_table(files_b))
    assert len(DatasetSchema.load(tmp_path / "a").split_paths("train")) == 6
    assert pq.read_metadata(DatasetSchema.load(tmp_path / "a").split_paths("train")[0]).num_row_groups == 3


def test_spec_validation():
    with pytest.raises(ValueError, match="correlation"):
        SyntheticGenerator(SyntheticSpec(rows=10, correlation=1.5))
    with pytest.raises(ValueError, match="tasks"):
        SyntheticGenerator(SyntheticSpec(rows=10, tasks=5, dense_dim=4))


_PEAK_RSS = """
import json, resource, sys
from pipeline.data.synthetic import SyntheticSpec, prepare_synthetic
prepare_synthetic(SyntheticSpec(rows=int(sys.argv[1]), dense_dim=256, sparse_features=2, chunk_rows=2048,
                                row_group_rows=4096, calibration_rows=2048, valid_fraction=0, test_fraction=0),
                  out=sys.argv[2])
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def test_memory_does_not_grow_with_rows(tmp_path):
    """6k vs 60k rows of 1 KiB dense each: holding the data would add ~55 MiB of RSS. (One split only:
    each open split writer holds a few MiB of compression state, a constant, not a growth.)"""
    peak = {}
    for rows in (6_000, 60_000):
        out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(rows), str(tmp_path / str(rows))],
                             capture_output=True, text=True, check=True)
        peak[rows] = json.loads(out.stdout.strip().splitlines()[-1]) / 1024  # MiB
    assert peak[60_000] - peak[6_000] < 20, peak


def test_the_encoding_digest_follows_the_generating_model_not_the_rows():
    """Other rows, splits or chunking: the same model, the same digest; another seed or vocabulary:
    another model, so a model trained on one is refused the other's data (docs/DATA.md)."""
    base = SyntheticSpec(rows=1000, **SMALL)
    same = [SyntheticSpec(rows=5000, **SMALL), SyntheticSpec(rows=1000, test_fraction=0.3, **dict(SMALL, chunk_rows=100))]
    other = [SyntheticSpec(rows=1000, seed=1, **SMALL), SyntheticSpec(rows=1000, correlation=0.9, **SMALL)]
    digest = base.encoding_digest("synthetic")
    assert all(s.encoding_digest("synthetic") == digest for s in same)
    assert all(s.encoding_digest("synthetic") != digest for s in other)
