"""The streaming reader: every row exactly once, determinism, conversion, padding, TorchRec compatibility."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchrec

from pipeline.data.reader import ParquetBatchStream, make_loader, padding_batch
from pipeline.data.schema import DatasetSchema, hash_ids_into_range

BATCH = 8


def _stream(root, split="train", **kwargs) -> ParquetBatchStream:
    schema = DatasetSchema.load(root)
    return ParquetBatchStream(schema, schema.split_paths(split), kwargs.pop("batch_size", BATCH), **kwargs)


def _all_row_ids(root, split="train") -> np.ndarray:
    return np.sort(np.concatenate([pq.read_table(p, columns=["row_id"])["row_id"].to_numpy()
                                   for p in DatasetSchema.load(root).split_paths(split)]))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_every_row_exactly_once(tiny_dataset, shuffle, world_size, num_workers):
    seen = []
    for rank in range(world_size):
        stream = _stream(tiny_dataset, rank=rank, world_size=world_size, num_workers=num_workers, shuffle=shuffle,
                         seed=3, shuffle_buffer_rows=16)
        batches = list(make_loader(stream, num_workers))
        assert len(batches) == stream.num_batches()
        sizes = [b.batch_size for b in batches]
        assert sum(s < BATCH for s in sizes) <= max(1, num_workers)  # at most one short batch per worker
        seen.append(torch.cat([b.keys for b in batches]).numpy())
    ids = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(ids), _all_row_ids(tiny_dataset))
    assert len(np.unique(ids)) == len(ids)


def test_drop_last_counts(tiny_dataset):
    stream = _stream(tiny_dataset, num_workers=2, drop_last=True, shuffle=True)
    batches = list(make_loader(stream, 2))
    assert len(batches) == stream.num_batches() > 0
    assert all(b.batch_size == BATCH for b in batches)


def _signature(batches) -> list[tuple]:
    return [(b.keys.tolist(), b.dense.tolist(), b.sparse_features.values().tolist(),
             b.sparse_features.lengths().tolist()) for b in batches]


def test_sequence_is_deterministic_and_epoch_dependent(tiny_dataset):
    def run(epoch, workers=2):
        stream = _stream(tiny_dataset, num_workers=workers, shuffle=True, seed=7, epoch=epoch, shuffle_buffer_rows=16)
        return _signature(make_loader(stream, workers))

    first = run(epoch=0)
    assert run(epoch=0) == first  # a re-created stream yields the same batches: resume = skip k batches
    other_epoch = run(epoch=1)
    assert other_epoch != first
    assert sorted(k for s in other_epoch for k in s[0]) == sorted(k for s in first for k in s[0])


def test_shuffle_mixes_rows_across_units(tiny_dataset):
    stream = _stream(tiny_dataset, shuffle=True, seed=1, shuffle_buffer_rows=32, batch_size=70)
    (batch,) = list(stream)
    keys = batch.keys.numpy()
    assert not np.array_equal(keys, np.sort(keys))
    first_unit = set(range(10))  # the rows of one row group must not stay together
    assert len(first_unit & set(keys[:10].tolist())) < 10


def test_shuffle_keeps_every_row_intact(tiny_dataset):
    table = pa.concat_tables([pq.read_table(p) for p in DatasetSchema.load(tiny_dataset).split_paths("train")])
    stream = _stream(tiny_dataset, shuffle=True, seed=2, shuffle_buffer_rows=16)
    batches = list(stream)
    keys = torch.cat([b.keys for b in batches]).numpy()
    dense = torch.cat([b.dense for b in batches]).numpy()
    expected = np.column_stack([table["d0"].to_numpy(), table["d1"].to_numpy(),
                                np.stack(table["v"].to_numpy(zero_copy_only=False))])
    np.testing.assert_array_equal(dense, expected[keys])  # row_id == position in this dataset
    a = torch.cat([b.sparse_features.to_dict()["a"].values() for b in batches]).numpy()
    np.testing.assert_array_equal(a, table["a"].to_numpy()[keys])
    labels = torch.cat([b.labels for b in batches]).numpy()
    np.testing.assert_array_equal(labels[:, 2], table["y_value"].to_numpy()[keys])


def test_evaluation_order_is_file_order(tiny_dataset):
    keys = torch.cat([b.keys for b in _stream(tiny_dataset)]).numpy()
    np.testing.assert_array_equal(keys, _all_row_ids(tiny_dataset))


def test_conversion_matches_parquet(tiny_dataset):
    stream = _stream(tiny_dataset, batch_size=16)
    batches = list(stream)
    table = pa.concat_tables([pq.read_table(p) for p in DatasetSchema.load(tiny_dataset).split_paths("train")])
    rows = table.num_rows
    dense = torch.cat([b.dense for b in batches])
    expected_dense = np.column_stack([table["d0"].to_numpy(), table["d1"].to_numpy(),
                                      np.stack(table["v"].to_numpy(zero_copy_only=False))])
    np.testing.assert_array_equal(dense.numpy(), expected_dense.astype(np.float32))
    assert dense.dtype == torch.float32 and dense.shape == (rows, 5)

    labels = torch.cat([b.labels for b in batches]).numpy()
    masks = torch.cat([b.masks for b in batches]).numpy()
    np.testing.assert_array_equal(labels[:, 0], table["y_click"].to_numpy())
    np.testing.assert_array_equal(labels[:, 1], table["y_conv"].fill_null(0).to_numpy())
    np.testing.assert_array_equal(labels[:, 2], table["y_value"].to_numpy())
    np.testing.assert_array_equal(masks[:, 0], np.ones(rows))
    np.testing.assert_array_equal(masks[:, 1], table["m_conv"].to_numpy())
    np.testing.assert_array_equal(torch.cat([b.weights for b in batches]).numpy(), table["w"].to_numpy())

    features = [b.sparse_features.to_dict() for b in batches]
    a = torch.cat([f["a"].values() for f in features]).numpy()
    np.testing.assert_array_equal(a, table["a"].to_numpy())
    b_lengths = torch.cat([f["b"].lengths() for f in features]).numpy()
    b_python = table["b"].to_pylist()
    np.testing.assert_array_equal(b_lengths, [len(x or []) for x in b_python])
    np.testing.assert_array_equal(torch.cat([f["b"].values() for f in features]).numpy(),
                                  [i for x in b_python for i in (x or [])])
    h = torch.cat([f["h"].values() for f in features]).numpy()
    raw_h = np.array([i for x in table["h"].to_pylist() for i in x], dtype=np.int64)
    np.testing.assert_array_equal(h, hash_ids_into_range(raw_h, 7))
    assert h.min() >= 0 and h.max() < 7 and len(np.unique(h)) > 1

    kjt = batches[0].sparse_features
    assert kjt.keys() == ["a", "b", "h"] and kjt.stride() == 16
    assert kjt.values().dtype == torch.int64 and kjt.lengths().dtype == torch.int32
    empty_b = sum(len(x or []) == 0 for x in b_python)
    assert empty_b > 0 and stream.stats.empty_lists["b"] == empty_b  # policy: counted, pooled to zero
    assert stream.stats.rows == rows and stream.stats.batches == len(batches)


def test_batches_feed_an_embedding_bag_collection(tiny_dataset):
    schema = DatasetSchema.load(tiny_dataset)
    spec = schema.input_spec()
    ebc = torchrec.EmbeddingBagCollection(tables=[
        torchrec.EmbeddingBagConfig(name=f.table_name, embedding_dim=f.embedding_dim, num_embeddings=f.num_embeddings,
                                    feature_names=[f.name],
                                    pooling=torchrec.PoolingType.MEAN if f.pooling == "mean" else torchrec.PoolingType.SUM)
        for f in spec.sparse_features])
    batch = next(iter(_stream(tiny_dataset))).to(torch.device("cpu"))
    pooled = ebc(batch.sparse_features)
    assert pooled.values().shape == (BATCH, sum(f.embedding_dim for f in spec.sparse_features))
    padding = padding_batch(schema, rows=3)
    assert ebc(padding.sparse_features).values().abs().sum() == 0  # empty bags pool to zero


def test_padding_batch_counts_nowhere(tiny_dataset):
    schema = DatasetSchema.load(tiny_dataset)
    pad = padding_batch(schema, rows=4)
    assert pad.dense.shape == (4, schema.dense_dim) and pad.labels.shape == (4, 3) == pad.masks.shape
    assert pad.weights.sum() == 0 and pad.masks.sum() == 0
    assert pad.sparse_features.stride() == 4 and pad.sparse_features.lengths().sum() == 0
    assert pad.sparse_features.keys() == ["a", "b", "h"]


def test_unprojected_columns_are_never_read(make_tiny_dataset):
    root = make_tiny_dataset(lambda split, i, t: t.set_column(t.schema.get_field_index("extra"), "extra",
                                                              pa.array(["junk"] * t.num_rows)))
    stream = _stream(root)
    assert "extra" not in stream.columns
    assert sum(b.batch_size for b in stream) == 70


def test_worker_count_must_match(tiny_dataset):
    stream = _stream(tiny_dataset, num_workers=2)
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(stream, 0)
    with pytest.raises(RuntimeError, match="make_loader"):
        next(iter(stream))


def test_ctrl_c_while_workers_start_waits_for_a_whole_iterator(tiny_dataset, monkeypatch):
    """Ctrl-C landing inside PyTorch's worker-iterator constructor (seen in CI: the test of `mtrec
    train`'s Ctrl-C message) used to leave a half-built iterator whose destructor printed an
    AttributeError traceback. Now the interrupt is held until the iterator is whole, then raised."""
    import gc
    import signal
    import sys

    real_queue = torch.multiprocessing.Queue

    def queue_then_ctrl_c(*args, **kwargs):  # the constructor's first step, before `_shutdown` exists
        signal.raise_signal(signal.SIGINT)
        return real_queue(*args, **kwargs)

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    stream = _stream(tiny_dataset, num_workers=1)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(torch.multiprocessing, "Queue", queue_then_ctrl_c)
        iter(make_loader(stream, 1))
    gc.collect()
    assert unraisable == []
