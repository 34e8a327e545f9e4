"""Streaming Parquet -> MultiTaskBatch reader for training and evaluation.

Work = (file, row group) units (`units.py`), dealt to global workers g = rank * W + worker_id.
A worker reads its units in order with column projection and `use_threads=False`, validates each
chunk (`ArrowBatchConverter.validate`), optionally mixes rows in a bounded, seeded shuffle buffer,
re-cuts the rows into batches of exactly `batch_size` (the last one per worker may be short) and
converts them. Batches never span ranks or workers. What a (rank, worker) yields is a deterministic
function of (seed, epoch, rank, world_size, num_workers), so a resumed trainer can re-create the
stream and skip the batches it already consumed.

Memory per worker is bounded by the shuffle buffer (up to ~3 x shuffle_buffer_rows rows while it
is being permuted), the row group being decoded (pyarrow reads a row group's column chunks whole),
and read_ahead batches in the DataLoader queue; not by the dataset size. For wide rows (e.g. 512
float32 = 2 KiB) pass a smaller shuffle_buffer_rows or write smaller row groups.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.batch import MultiTaskBatch
from pipeline.data.arrow_to_batch import ArrowBatchConverter, ReadStats, check_file_columns, kjt_from_arrays
from pipeline.data.schema import DataError, DatasetSchema
from pipeline.data.units import WorkUnit, assign_units, global_worker, list_units
from pipeline.runtime.interrupts import interrupts_deferred

log = logging.getLogger(__name__)

MIN_READ_ROWS = 8192  # rows per Parquet read call: amortises per-call overhead for small batches


class ParquetBatchStream(IterableDataset):
    """Yields MultiTaskBatch of `batch_size` rows for one rank; worker-aware via get_worker_info().

    Iterate it directly when num_workers == 0, otherwise through `make_loader(stream, num_workers)`.
    `stats` holds the counters (rows, batches, empty id lists) of the last iteration in this process;
    every worker also logs them when it finishes (DEBUG: RUN/train.log, not the console).
    """

    def __init__(self, schema: DatasetSchema, paths: Iterable[str], batch_size: int, *, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, shuffle: bool = False, seed: int = 0,
                 epoch: int = 0, shuffle_buffer_rows: int = 65536, read_ahead: int = 2, drop_last: bool = False,
                 with_keys: bool = True, exclude_keys: Optional[np.ndarray] = None) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or read_ahead < 1 or shuffle_buffer_rows < 1:
            raise ValueError(f"bad stream settings batch_size={batch_size} num_workers={num_workers} "
                             f"read_ahead={read_ahead} shuffle_buffer_rows={shuffle_buffer_rows}")
        global_worker(rank, world_size, 0, num_workers)  # validates rank/world_size
        self.schema = schema
        self.batch_size = batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.read_ahead = read_ahead
        self.drop_last = drop_last
        # exclude_keys: rows (by the schema's key column) this epoch already trained on under another
        # world size (pipeline/train/data_position.py); the stream reads the rest of the epoch.
        self.exclude = None if exclude_keys is None else pa.array(np.asarray(exclude_keys, dtype=np.int64))
        self.with_keys = with_keys or self.exclude is not None
        with_keys = self.with_keys
        self.units = list_units(paths)
        for path in dict.fromkeys(u.path for u in self.units):  # fail early, in the main process
            check_file_columns(schema, pq.read_schema(path), path, with_keys)
        self.converter = ArrowBatchConverter(schema, with_keys)
        self.columns = schema.columns(with_keys)
        self.stats = ReadStats()
        self._excluded_rows = self._count_excluded() if self.exclude is not None else {}

    def _count_excluded(self) -> dict[WorkUnit, int]:
        """Excluded rows per unit (reads the key column only), so num_batches() stays exact."""
        counts = {}
        for unit in self.units:
            with pq.ParquetFile(unit.path) as file:
                keys = file.read_row_group(unit.row_group, columns=[self.schema.key], use_threads=False)
            counts[unit] = int(pc.sum(pc.is_in(keys[self.schema.key], value_set=self.exclude)).as_py() or 0)
        return counts

    def worker_units(self, worker_id: int) -> list[WorkUnit]:
        """The units worker `worker_id` of this rank reads this epoch, in order."""
        return assign_units(self.units, self.rank, self.world_size, worker_id, self.num_workers,
                            shuffle=self.shuffle, seed=self.seed, epoch=self.epoch)

    def num_batches(self) -> int:
        """Exact number of batches this rank yields this epoch over all its workers (footers only)."""
        total = 0
        for worker_id in range(max(1, self.num_workers)):
            rows = sum(u.num_rows - self._excluded_rows.get(u, 0) for u in self.worker_units(worker_id))
            total += rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
        return total

    def __iter__(self) -> Iterator[MultiTaskBatch]:
        worker_id = self._worker_id()
        g, total = global_worker(self.rank, self.world_size, worker_id, self.num_workers)
        chunks: Iterator[pa.Table] = self._read(self.worker_units(worker_id))
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, g, total])
            chunks = _shuffled(chunks, self.shuffle_buffer_rows, rng)
        self.stats = ReadStats()
        in_worker = get_worker_info() is not None
        try:
            for table in _rebatch(chunks, self.batch_size, self.drop_last):
                batch = self.converter.convert(table, self.stats)
                yield _PackedBatch.pack(batch) if in_worker else batch
        except DataError as e:
            if not in_worker:
                raise
            yield _WorkerDataError(str(e))  # raised again, as is, by the main process (_BatchLoader)
            return
        log.debug("data rank %d worker %d/%d epoch %d: %s", self.rank, worker_id, max(1, self.num_workers),
                 self.epoch, self.stats.summary())

    def _worker_id(self) -> int:
        info = get_worker_info()
        if info is None:
            if self.num_workers:
                raise RuntimeError(f"stream built for num_workers={self.num_workers}: iterate it through "
                                   f"make_loader(stream, {self.num_workers})")
            return 0
        if info.num_workers != self.num_workers:
            raise RuntimeError(f"stream built for num_workers={self.num_workers} runs in a DataLoader with "
                               f"{info.num_workers} workers")
        return info.id

    def _read(self, units: list[WorkUnit]) -> Iterator[pa.Table]:
        """Validated chunks of the units, in order; read errors name the file and row group."""
        read_rows = max(self.batch_size, MIN_READ_ROWS)
        for unit in units:
            rows_read = 0
            for batch in _read_row_group(unit, self.columns, read_rows):
                self.converter.validate(batch, unit.path, unit.row_group, first_row=rows_read)
                rows_read += batch.num_rows
                if self.exclude is not None:
                    batch = batch.filter(pc.invert(pc.is_in(batch[self.schema.key], value_set=self.exclude)))
                yield pa.Table.from_batches([batch])
            if rows_read != unit.num_rows:
                raise DataError(f"{unit.path}: row group {unit.row_group}: read {rows_read} rows, "
                                f"footer says {unit.num_rows}")


def _read_row_group(unit: WorkUnit, columns: list[str], read_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of one row group; Arrow/IO failures become DataError naming file and row group."""
    try:
        with pq.ParquetFile(unit.path) as file:
            yield from file.iter_batches(batch_size=read_rows, row_groups=[unit.row_group], columns=columns,
                                         use_threads=False)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{unit.path}: row group {unit.row_group}: cannot read ({type(e).__name__}: {e})") from None


def _shuffled(chunks: Iterator[pa.Table], capacity: int, rng: np.random.Generator) -> Iterator[pa.Table]:
    """Bounded shuffle: whenever the buffer holds >= capacity rows, permute it, emit all but a random
    half of `capacity` and keep that half to mix with later rows (so rows travel across unit borders)."""
    buffer: list[pa.Table] = []
    count = 0
    for chunk in chunks:
        buffer.append(chunk)
        count += chunk.num_rows
        if count >= capacity:
            mixed = _permute(pa.concat_tables(buffer), rng)
            keep = capacity // 2
            yield mixed.slice(0, count - keep)
            buffer, count = [mixed.slice(count - keep)], keep
    if count:
        yield _permute(pa.concat_tables(buffer), rng)


def _permute(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """The rows of `table` in random order (one copy of each column)."""
    destination = rng.permutation(table.num_rows)  # row i moves to position destination[i]
    order = np.argsort(destination)  # position j receives row order[j]
    return pa.table({name: _scatter(column, destination) if _is_wide(column.type) else column.take(order)
                     for name, column in zip(table.column_names, table.columns)})


def _is_wide(arrow_type: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(arrow_type)


def _scatter(column: pa.ChunkedArray, destination: np.ndarray) -> pa.Array:
    """Fixed-size-list rows scattered chunk by chunk into one numpy buffer: no concatenated copy,
    and ~10x faster than Arrow's element-wise take for wide float rows (measured, 512 x float32)."""
    width = column.type.list_size
    out = np.empty((len(column), width), dtype=column.type.value_type.to_pandas_dtype())
    start = 0
    for chunk in column.chunks:  # validated: no nulls
        out[destination[start:start + len(chunk)]] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        start += len(chunk)
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), width)


def _rebatch(chunks: Iterator[pa.Table], rows: int, drop_last: bool) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly `rows` rows (the last one shorter unless drop_last)."""
    pending: list[pa.Table] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += chunk.num_rows
        while count >= rows:
            table = pa.concat_tables(pending)
            yield table.slice(0, rows)
            pending, count = [table.slice(rows)], count - rows
    if count and not drop_last:
        yield pa.concat_tables(pending)


@dataclass
class _PackedBatch:
    """A MultiTaskBatch flattened into one numpy byte buffer for the trip from a DataLoader worker.

    A tensor sent from a worker costs a shared-memory segment plus a file-descriptor hand-over
    through a socket; for the seven small tensors of a census batch (1024 rows, 440 KB) that was
    5.7 ms of CPU per batch, against 1.5 ms for one buffer pickled inline (measured on the 2-core dev
    machine) [project].
    """

    buffer: np.ndarray  # uint8; every part starts at a multiple of 8 bytes
    parts: list[tuple[str, int, int, torch.dtype, tuple[int, ...]]]  # (field, offset, bytes, dtype, shape)
    sparse_keys: list[str]
    length_per_key: list[int]
    stride: int

    @classmethod
    def pack(cls, batch: MultiTaskBatch) -> "_PackedBatch":
        kjt = batch.sparse_features
        tensors = {"dense": batch.dense, "values": kjt.values(), "lengths": kjt.lengths(), "labels": batch.labels,
                   "masks": batch.masks, "weights": batch.weights}
        if batch.keys is not None:
            tensors["keys"] = batch.keys
        parts, offset = [], 0
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            parts.append((name, offset, nbytes, t.dtype, tuple(t.shape)))
            offset += -(-nbytes // 8) * 8
        buffer = np.empty(offset, dtype=np.uint8)
        for (_, start, nbytes, _, _), t in zip(parts, tensors.values()):
            buffer[start:start + nbytes] = t.contiguous().view(-1).view(torch.uint8).numpy()
        return cls(buffer, parts, kjt.keys(), kjt.length_per_key(), kjt.stride())

    def unpack(self) -> MultiTaskBatch:
        buffer = torch.from_numpy(self.buffer)
        t = {name: buffer[start:start + nbytes].view(dtype).view(shape)
             for name, start, nbytes, dtype, shape in self.parts}
        kjt = KeyedJaggedTensor(keys=self.sparse_keys, values=t["values"], lengths=t["lengths"], stride=self.stride,
                                length_per_key=self.length_per_key)
        return MultiTaskBatch(dense=t["dense"], sparse_features=kjt, labels=t["labels"], masks=t["masks"],
                              weights=t["weights"], keys=t.get("keys"))


@dataclass
class _WorkerDataError:
    """A DataError found in a DataLoader worker, sent as an item. Raised in the worker, it would
    reach the main process re-created around the worker's whole traceback (~20 lines of message);
    sent as data, the main process raises the same one-line DataError the reader raises in-process."""

    message: str


class _BatchLoader(DataLoader):
    """A DataLoader that hands out MultiTaskBatch, unpacking what workers sent as _PackedBatch.

    Starting the workers defers Ctrl-C: a KeyboardInterrupt inside PyTorch's worker iterator
    constructor leaves a half-built object whose destructor prints an AttributeError traceback
    ("no attribute '_shutdown'") over our one-line "interrupted at step N" message.
    """

    def __iter__(self) -> Iterator[MultiTaskBatch]:
        with interrupts_deferred("starting the data loader workers"):
            items = super().__iter__()
        return _unpacked(items)


def _unpacked(items: Iterator) -> Iterator[MultiTaskBatch]:
    for item in items:
        if isinstance(item, _WorkerDataError):
            raise DataError(item.message)
        yield item.unpack() if isinstance(item, _PackedBatch) else item


def make_loader(stream: ParquetBatchStream, num_workers: int) -> DataLoader:
    """DataLoader over whole batches: batch_size=None (no collate), workers interleaved round-robin
    in a fixed order (in_order), no persistent workers, at most `stream.read_ahead` batches queued
    per worker."""
    if num_workers != stream.num_workers:
        raise ValueError(f"make_loader(num_workers={num_workers}) for a stream built with "
                         f"num_workers={stream.num_workers}")
    return _BatchLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False,
                        prefetch_factor=stream.read_ahead if num_workers else None, in_order=True,
                        pin_memory=False, worker_init_fn=_die_with_parent if num_workers else None)


def _die_with_parent(worker_id: int) -> None:
    """Linux: SIGKILL this worker when its rank process dies. A rank killed mid-step otherwise leaves
    a forked worker blocked on a full pipe, holding the dead rank's sockets (the restarted job then
    hangs in its rendezvous). The worker's own parent-liveness check never runs while it is blocked."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux / glibc: keep PyTorch's own watchdog only
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def padding_batch(schema: DatasetSchema, rows: int = 1) -> MultiTaskBatch:
    """`rows` rows that count nowhere (weight 0, every mask 0, empty id lists, key -1): evaluation pads
    short ranks with these so that all ranks run the same number of steps."""
    tasks = len(schema.tasks)
    sparse = [s.name for s in schema.sparse]
    empty_ids = [np.zeros(0, dtype=np.int64)] * len(sparse)
    no_lengths = [np.zeros(rows, dtype=np.int32)] * len(sparse)
    return MultiTaskBatch(
        dense=torch.zeros(rows, schema.dense_dim),
        sparse_features=kjt_from_arrays(sparse, empty_ids, no_lengths, rows),
        labels=torch.zeros(rows, tasks),
        masks=torch.zeros(rows, tasks),
        weights=torch.zeros(rows),
        keys=torch.full((rows,), -1, dtype=torch.int64),
    )
