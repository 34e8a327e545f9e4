"""`mtrec prepare table`: raw CSV/TSV/Parquet/JSON-lines logs + a spec -> an mtrec dataset.

Two streaming passes over the inputs (memory bounded by a read block, the fitted statistics and
one row group per split, never by the number of rows):
1. fit: stream the files that can hold train rows, keep the train rows (split rule, bad-label and
   duplicate-key policies applied exactly as in pass 2) and fit dense statistics, vocabularies and
   quantiles on them; check that every binary task has both classes on train.
2. encode and write: stream every file, encode every row with the fitted statistics, route it to
   its split's `SplitWriter`, count what the summary reports.
The output (schema.yaml + Parquet splits + vocab/<feature>.parquet) is written to a temporary
directory and renamed when complete (`atomic_dir`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from models.typed_config import ConfigError, to_dict
from pipeline.data.schema import (ENCODING_KEY, SPLITS, DataError, DatasetSchema, DenseColumn, SparseColumn,
                                  SplitInfo, SplitWriter, TaskColumn, existing_dataset)
from pipeline.data.table.fitted import Fitted, fit_stats, load_fitted
from pipeline.data.table.labels import sample_weights
from pipeline.data.table.readers import InputFile, RawBatch, file_columns, read_all, resolve_inputs
from pipeline.data.table.spec import TableSpec, auto_embedding_dim, load_spec
from pipeline.data.table.rows import Rows, RowState, dense_raw, rows_of
from pipeline.data.table.summary import ImportCounts, render
from pipeline.data.table.transforms import NULL_ID, OOV_ID, encode_dense
from pipeline.data.table.values import as_numbers, as_text, column, text_lists
from pipeline.runtime.atomic import atomic_dir

log = logging.getLogger(__name__)

KEY = "row_id"
WEIGHT = "sample_weight"
# Part of `prep.params`: bumped when the same spec and inputs would be encoded differently, so that
# an older dataset is not taken as up to date.
IMPORTER_VERSION = 1


def prepare_table(spec_path: str | os.PathLike, out: str | os.PathLike, inputs: Optional[list[str]] = None,
                  overwrite: bool = False, reuse_stats: Optional[str] = None) -> str:
    """Import the inputs of the spec at `spec_path` into the dataset `out`; returns the summary text.

    inputs: `--input` entries replacing the spec's files. reuse_stats: a dataset written by this
    importer whose fitted statistics are applied instead of fitting new ones (pass 1 is skipped).
    An existing `out` made from the same spec and input files is left as is.
    """
    spec = load_spec(spec_path)
    files = resolve_inputs(spec.inputs, Path(spec_path).parent, inputs)
    ignored = check_columns(spec, files)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="input-hash") as pool:
        # The inputs' sha256 (about 1 s per GB) is needed first only when there is a dataset to
        # compare with; otherwise it runs next to pass 1 (hashlib releases the GIL).
        identities = pool.submit(lambda: [_identity(f, stop) for f in files])
        try:
            if Path(out).exists() and not overwrite:
                existing = existing_dataset(out, _params(spec, identities.result(), reuse_stats), overwrite=False)
                if existing is not None:
                    return f"{out} is up to date (same spec and input files)\n{render(existing.prep['summary'])}"
            fitted = load_fitted(spec, Path(reuse_stats)) if reuse_stats else fit_stats(spec, files)
            params = _params(spec, identities.result(), reuse_stats)
        finally:
            stop.set()  # a failed pass 1 does not wait for the hashing to finish
    with atomic_dir(out, overwrite=overwrite) as tmp:
        infos, counts = write_splits(spec, files, fitted, tmp)
        prep = {"params": params, "fitted": fitted.save(tmp), ENCODING_KEY: fitted.encoding_digest(spec),
                "summary": counts.as_dict(infos, fitted.vocab_sizes(), ignored)}
        schema = dataset_schema(spec, fitted, infos, prep)
        schema.save(tmp)
    log.info("table dataset %r written to %s", spec.name, out)
    return f"dataset {spec.name!r} written to {out}\n{render(prep['summary'])}"


def check_columns(spec: TableSpec, files: list[InputFile]) -> list[str]:
    """DataError naming the file, the column and the spec key that names it when a file lacks a column
    (JSON lines: only logged, a key may first appear after the first block); returns unused columns."""
    uses = spec.column_uses()
    seen: dict[str, None] = {}
    for file in files:
        have = file_columns(file, spec.inputs)
        missing = [f"{c!r} ({key})" for c, key in uses.items() if c not in have]
        if missing and file.format == "jsonl":
            log.warning("%s: keys %s not in the first block (read as null where absent)", file.path, missing)
        elif missing:
            raise DataError(f"{file.path}: column(s) {', '.join(missing)} named in the spec are not in the file; "
                            f"its columns: {have}")
        seen.update(dict.fromkeys(have))
    wanted = set(uses)
    return [c for c in seen if c not in wanted and c not in spec.drop]


def _params(spec: TableSpec, identities: list[dict], reuse_stats: Optional[str]) -> dict:
    """`prep.params`: what makes two imports the same (the re-run check of `existing_dataset`)."""
    return {"importer_version": IMPORTER_VERSION, "spec": to_dict(spec), "inputs": identities,
            "reuse_stats": reuse_stats}


def _identity(file: InputFile, stop: threading.Event) -> Optional[dict]:
    """Name, split and sha256 of an input file (None when `stop` is set before the end)."""
    digest = hashlib.sha256()
    with open(file.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            if stop.is_set():
                return None
            digest.update(block)
    return {"file": Path(file.path).name, "split": file.split, "sha256": digest.hexdigest()}


# -- pass 2 -----------------------------------------------------------------------------------------
def write_splits(spec: TableSpec, files: list[InputFile], fitted: Fitted, out: Path) -> tuple[dict, ImportCounts]:
    """Encode every row and write it to its split; returns split infos and the counts."""
    counts = ImportCounts()
    state = RowState()
    with SplitWriters(out, spec) as writers:
        for batch in read_all(files, spec.inputs, spec.raw_columns(), spec.numeric_columns()):
            rows = rows_of(batch, spec, state)
            counts.rows_read += batch.table.num_rows
            writers.write(encode_batch(batch, rows, spec, fitted, counts), rows.splits[rows.keep])
        counts.duplicate_rows = state.duplicates
        infos = writers.close()
    if "train" not in infos:
        raise DataError(f"no train rows in {[f.path for f in files]} (check the split rule)")
    return infos, counts


class SplitWriters:
    """One SplitWriter per split, fed by a single background thread (Parquet encoding and zstd
    release the GIL, so writing overlaps the encoding of the next batch); at most `WRITE_AHEAD`
    tables wait, so memory stays bounded."""

    WRITE_AHEAD = 2

    def __init__(self, out: Path, spec: TableSpec) -> None:
        self.out, self.spec, self.tasks = out, spec, task_columns(spec)
        self.writers: dict[int, SplitWriter] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="table-writer")
        self.pending: deque[Future] = deque()

    def write(self, table: pa.Table, split_of_row: np.ndarray) -> None:
        while len(self.pending) >= self.WRITE_AHEAD:
            self.pending.popleft().result()  # re-raises a write error here
        self.pending.append(self.pool.submit(self._write, table, split_of_row))

    def _write(self, table: pa.Table, split_of_row: np.ndarray) -> None:
        for split in np.unique(split_of_row):
            if split not in self.writers:
                self.writers[split] = SplitWriter(self.out, SPLITS[split], table.schema,
                                                  row_group_rows=self.spec.row_group_rows,
                                                  file_rows=self.spec.file_rows, tasks=self.tasks)
            part = split_of_row == split
            self.writers[split].write(table if part.all() else table.filter(pa.array(part)))

    def close(self) -> dict[str, SplitInfo]:
        self._drain()
        return {SPLITS[s]: self.writers[s].close() for s in sorted(self.writers)}

    def _drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self) -> "SplitWriters":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self._drain()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def encode_batch(batch: RawBatch, rows: Rows, spec: TableSpec, fitted: Fitted, counts: ImportCounts) -> pa.Table:
    """The output columns of the kept rows of `batch` (key, dense, categorical, labels, masks, weight)."""
    keep = rows.keep
    split_of_row = rows.splits[keep]
    columns = {KEY: pa.array(rows.row_ids[keep])}
    for d in spec.dense:
        raw = dense_raw(batch, d, counts.unparseable)[keep]
        _count_per_split(counts.nulls_filled[d.name], np.isnan(raw), split_of_row)
        columns[d.name] = pa.array(encode_dense(d, fitted.dense[d.name], raw))
    for c in spec.categorical:
        columns[c.name] = categorical_column(batch, c, fitted, keep, split_of_row, counts)
    labels, masks = rows.labels.labels[keep], rows.labels.masks[keep]
    for t, task in enumerate(spec.tasks):
        columns[f"label_{task.name}"] = pa.array(labels[:, t])
        if task.mask:
            columns[f"mask_{task.name}"] = pa.array(masks[:, t])
            for split, n in enumerate(np.bincount(split_of_row, minlength=len(SPLITS))):
                counts.mask_rows[task.name][SPLITS[split]][0] += int(masks[split_of_row == split, t].sum())
                counts.mask_rows[task.name][SPLITS[split]][1] += int(n)
    for task, n in rows.labels.dropped.items():
        counts.bad_label_rows[task] += n
    if spec.weight:
        columns[WEIGHT] = pa.array(sample_weights(batch, spec.weight)[keep])
    return pa.table(columns)


def categorical_column(batch: RawBatch, c, fitted: Fitted, keep: np.ndarray, split_of_row: np.ndarray,
                       counts: ImportCounts) -> pa.Array:
    """int64 ids (scalar) or list<int64> ids (multi_hot) of the kept rows; counts OOV and nulls."""
    encoder = fitted.encoders[c.name]
    if c.encoding == "bucketize":
        ids = encoder.encode_numbers(as_numbers(batch, c.source, "null")[0])[keep]
    elif not c.multi_hot:
        ids = encoder.encode_text(as_text(column(batch, c.source)))[keep]
    else:
        values, value_rows = text_lists(batch, c.source, c.separator)
        ids = encoder.encode_text(values)
        new_index = np.cumsum(keep) - 1  # batch row -> kept row
        kept = keep[value_rows]
        ids, value_rows = ids[kept], new_index[value_rows[kept]]
        lengths = np.bincount(value_rows, minlength=int(keep.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        _count_ids(counts, c, ids, split_of_row[value_rows])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
    _count_ids(counts, c, ids, split_of_row)
    return pa.array(ids, pa.int64())


def _count_per_split(counter: dict[str, int], flags: np.ndarray, split_of: np.ndarray) -> None:
    """counter[split] += number of true `flags` in each split."""
    for split, n in enumerate(np.bincount(split_of[flags], minlength=len(SPLITS))):
        counter[SPLITS[split]] += int(n)


def _count_ids(counts: ImportCounts, c, ids: np.ndarray, split_of_id: np.ndarray) -> None:
    _count_per_split(counts.null_ids[c.name], ids == NULL_ID, split_of_id)
    if c.encoding == "vocab":
        oov = counts.oov[c.name]
        hits = np.bincount(split_of_id[ids == OOV_ID], minlength=len(SPLITS))
        present = np.bincount(split_of_id[ids != NULL_ID], minlength=len(SPLITS))
        for split in range(len(SPLITS)):
            oov[SPLITS[split]][0] += int(hits[split])
            oov[SPLITS[split]][1] += int(present[split])


# -- schema -----------------------------------------------------------------------------------------
def task_columns(spec: TableSpec) -> tuple[TaskColumn, ...]:
    return tuple(TaskColumn(name=t.name, label=f"label_{t.name}", kind=t.kind, loss_weight=t.loss_weight,
                            mask=f"mask_{t.name}" if t.mask else None) for t in spec.tasks)


def dataset_schema(spec: TableSpec, fitted: Fitted, infos: dict, prep: dict) -> DatasetSchema:
    sparse = []
    for c in spec.categorical:
        n = fitted.encoders[c.name].num_embeddings
        dim = auto_embedding_dim(n) if c.embedding_dim == "auto" else c.embedding_dim
        sparse.append(SparseColumn(name=c.name, column=c.name, num_embeddings=n, embedding_dim=dim,
                                   pooling=c.pooling, layout="list" if c.multi_hot else "scalar"))
    schema = DatasetSchema(name=spec.name, key=KEY, dense=tuple(DenseColumn(d.name) for d in spec.dense),
                           sparse=tuple(sparse), tasks=task_columns(spec), weight=WEIGHT if spec.weight else None,
                           splits=infos, prep=prep)
    try:
        schema.validate("schema")
    except ConfigError as e:
        raise ConfigError(f"the spec makes an invalid dataset schema: {e}") from None
    return schema
