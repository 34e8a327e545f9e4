"""The criteo-like preset: its generating model, on-disk types, table rule, oracle and determinism."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.criteo_like import CRITEO_LIKE_CARDINALITIES, CriteoLikeGenerator, CriteoLikeSpec, prepare_criteo_like
from pipeline.data.reader import ParquetBatchStream
from pipeline.data.schema import DatasetSchema

SMALL = dict(calibration_rows=20_000, chunk_rows=5000, row_group_rows=2048)


def test_default_tables_follow_the_documented_rule():
    spec = CriteoLikeSpec(rows=1)
    rows = [spec.table_rows(v) for v in spec.categorical_cardinalities + spec.multi_hot_cardinalities]
    assert sum(v > 10_000_000 for v in CRITEO_LIKE_CARDINALITIES) == 5  # several features over 10M raw ids
    assert max(rows) == 10_000_000 and rows.count(10_000_000) == 6
    assert rows == [min(v, 10_000_000) for v in spec.categorical_cardinalities + spec.multi_hot_cardinalities]


def test_rates_masks_and_labels_follow_the_generating_model():
    generator = CriteoLikeGenerator(CriteoLikeSpec(rows=100_000, **SMALL))
    chunks = [generator.chunk(j) for j in range(generator.spec.num_chunks)]
    click = np.concatenate([c.click for c in chunks]).astype(float)
    conversion = np.concatenate([c.conversion for c in chunks]).astype(float)
    truth = np.concatenate([generator.truth(c) for c in chunks])
    assert 0.03 <= click.mean() <= 0.05
    assert not conversion[click == 0].any()  # conversions only happen on clicks
    assert conversion[click == 1].mean() == pytest.approx(0.1, abs=0.03)
    # the labels come from the stored probabilities: calibrated within sampling error
    assert truth[:, 0].mean() == pytest.approx(click.mean(), abs=0.003)
    dwell = np.concatenate([c.dwell for c in chunks])
    assert np.mean((dwell - truth[:, 2]) ** 2) == pytest.approx(0.25, rel=0.05)  # dwell_noise^2
    dense = np.concatenate([c.dense for c in chunks])
    assert dense.dtype == np.float32 and np.isfinite(dense).all() and (dense >= 0).all()
    assert (dense[:, 4] == 0).mean() == pytest.approx(0.03, abs=0.005)  # counter 5: 3% missing, filled with 0


def test_chunks_are_reproducible_on_their_own():
    spec = CriteoLikeSpec(rows=20_000, seed=3, **SMALL)
    a, b = CriteoLikeGenerator(spec), CriteoLikeGenerator(spec)
    for field in ("categorical", "click", "dense"):
        assert np.array_equal(getattr(a.chunk(2), field), getattr(b.chunk(2), field))
    assert not np.array_equal(a.chunk(1).categorical, a.chunk(2).categorical)
    # another sample: other rows from the same generating model (a scoring log with the same oracle)
    other = CriteoLikeGenerator(CriteoLikeSpec(rows=20_000, seed=3, sample=1, **SMALL))
    assert other.geometry.click_bias == a.geometry.click_bias
    assert np.array_equal(other.geometry.categorical_weights, a.geometry.categorical_weights)
    assert not np.array_equal(other.chunk(2).categorical, a.chunk(2).categorical)


def test_written_dataset_is_compact_and_reads_back(tmp_path):
    spec = CriteoLikeSpec(rows=12_000, categorical_cardinalities=(2_000_000, 50, 7), multi_hot_cardinalities=(1000,),
                          multi_hot_lengths=(3.0,), max_table_rows=100_000, embedding_dim=8, **SMALL)
    summary = prepare_criteo_like(spec, tmp_path / "d")
    assert "oracle on test (best achievable): click AUC" in summary
    schema = DatasetSchema.load(tmp_path / "d")
    assert [s.num_embeddings for s in schema.sparse] == [100_000, 50, 7, 1000]
    assert [t.name for t in schema.tasks] == ["click", "conversion", "dwell"] and schema.tasks[1].mask == "click"
    oracle = schema.prep["oracle"]
    assert oracle["split"] == "test" and oracle["tasks"]["click"]["count"] == schema.splits["test"].rows
    arrow = pq.read_schema(schema.split_paths("train")[0])
    assert arrow.field("click").type == pa.int8() and arrow.field("dwell").type == pa.float32()
    conversion = pq.read_table(schema.split_paths("train")[0], columns=["click", "conversion"])
    assert conversion["conversion"].null_count == int((conversion["click"].to_numpy() == 0).sum())
    batch = next(iter(ParquetBatchStream(schema, schema.split_paths("train"), 256)))
    assert batch.dense.shape == (256, 13) and batch.labels.shape == (256, 3)
    assert ((batch.masks[:, 1] == 1) == (batch.labels[:, 0] == 1)).all()  # conversion counts on clicks only
    assert "up to date" in prepare_criteo_like(spec, tmp_path / "d")  # same spec: kept


def test_another_sample_of_the_same_model_keeps_the_encoding_digest():
    """`--sample 1` (a scoring log of the scale benchmark) is scored by a model trained on sample 0."""
    digest = CriteoLikeSpec(rows=1000, **SMALL).encoding_digest("criteo-like")
    assert CriteoLikeSpec(rows=50, sample=1, **SMALL).encoding_digest("criteo-like") == digest
    assert CriteoLikeSpec(rows=1000, seed=1, **SMALL).encoding_digest("criteo-like") != digest
