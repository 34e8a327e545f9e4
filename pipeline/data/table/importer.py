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
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from models.typed_config import ConfigError, to_dict
from pipeline.data.schema import (SPLITS, DataError, DatasetSchema, DenseColumn, SparseColumn, SplitWriter,
                                  TaskColumn, existing_dataset)
from pipeline.data.table.fitted import Fitted, fit_stats, load_fitted
from pipeline.data.table.labels import sample_weights
from pipeline.data.table.readers import InputFile, RawBatch, file_columns, read_batches, resolve_inputs
from pipeline.data.table.spec import TableSpec, auto_embedding_dim, load_spec
from pipeline.data.table.rows import Rows, RowState, dense_raw, rows_of
from pipeline.data.table.splits import TRAIN
from pipeline.data.table.summary import ImportCounts, render
from pipeline.data.table.transforms import NULL_ID, OOV_ID, encode_dense
from pipeline.data.table.values import as_numbers, as_text, column, text_lists
from pipeline.runtime.atomic import atomic_dir

log = logging.getLogger(__name__)

KEY = "row_id"
WEIGHT = "sample_weight"


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
    params = {"spec": to_dict(spec), "inputs": [_identity(f) for f in files], "reuse_stats": reuse_stats}
    existing = existing_dataset(out, params, overwrite=overwrite)
    if existing is not None:
        return f"{out} is up to date (same spec and input files)\n{render(existing.prep['summary'])}"
    fitted = load_fitted(spec, Path(reuse_stats)) if reuse_stats else fit_stats(spec, files)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        infos, counts = write_splits(spec, files, fitted, tmp)
        prep = {"params": params, "fitted": fitted.save(tmp),
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


def _identity(file: InputFile) -> dict:
    digest = hashlib.sha256()
    with open(file.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"file": Path(file.path).name, "split": file.split, "sha256": digest.hexdigest()}


# -- pass 2 -----------------------------------------------------------------------------------------
def write_splits(spec: TableSpec, files: list[InputFile], fitted: Fitted, out: Path) -> tuple[dict, ImportCounts]:
    """Encode every row and write it to its split; returns split infos and the counts."""
    counts = ImportCounts()
    writers: dict[int, SplitWriter] = {}
    tasks = task_columns(spec)
    state = RowState()
    for file in files:
        for batch in read_batches(file, spec.inputs, spec.raw_columns()):
            rows = rows_of(batch, spec, state)
            counts.rows_read += batch.table.num_rows
            table = encode_batch(batch, rows, spec, fitted, counts)
            for split in np.unique(rows.splits[rows.keep]):
                if split not in writers:
                    writers[split] = SplitWriter(out, SPLITS[split], table.schema, row_group_rows=spec.row_group_rows,
                                                 file_rows=spec.file_rows, tasks=tasks)
                part = rows.splits[rows.keep] == split
                writers[split].write(table if part.all() else table.filter(pa.array(part)))
    counts.duplicate_rows = state.duplicates
    if TRAIN not in writers:
        raise DataError(f"no train rows in {[f.path for f in files]} (check the split rule)")
    return {SPLITS[s]: writers[s].close() for s in sorted(writers)}, counts


def encode_batch(batch: RawBatch, rows: Rows, spec: TableSpec, fitted: Fitted, counts: ImportCounts) -> pa.Table:
    """The output columns of the kept rows of `batch` (key, dense, categorical, labels, masks, weight)."""
    keep = rows.keep
    split_names = np.array(SPLITS)[rows.splits[keep]]
    columns = {KEY: pa.array(rows.row_ids[keep])}
    for d in spec.dense:
        raw = dense_raw(batch, d, counts.unparseable)[keep]
        for split in SPLITS:
            counts.nulls_filled[d.name][split] += int(np.isnan(raw[split_names == split]).sum())
        columns[d.name] = pa.array(encode_dense(d, fitted.dense[d.name], raw))
    for c in spec.categorical:
        columns[c.name] = categorical_column(batch, c, fitted, keep, split_names, counts)
    labels, masks = rows.labels.labels[keep], rows.labels.masks[keep]
    for t, task in enumerate(spec.tasks):
        columns[f"label_{task.name}"] = pa.array(labels[:, t])
        if task.mask:
            columns[f"mask_{task.name}"] = pa.array(masks[:, t])
            for split in SPLITS:
                in_split = split_names == split
                counts.mask_rows[task.name][split][0] += int(masks[in_split, t].sum())
                counts.mask_rows[task.name][split][1] += int(in_split.sum())
    for task, n in rows.labels.dropped.items():
        counts.bad_label_rows[task] += n
    if spec.weight:
        columns[WEIGHT] = pa.array(sample_weights(batch, spec.weight)[keep])
    return pa.table(columns)


def categorical_column(batch: RawBatch, c, fitted: Fitted, keep: np.ndarray, split_names: np.ndarray,
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
        _count_ids(counts, c, ids, split_names[value_rows])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
    _count_ids(counts, c, ids, split_names)
    return pa.array(ids, pa.int64())


def _count_ids(counts: ImportCounts, c, ids: np.ndarray, split_of_id: np.ndarray) -> None:
    for split in SPLITS:
        in_split = ids[split_of_id == split]
        counts.null_ids[c.name][split] += int((in_split == NULL_ID).sum())
        if c.encoding == "vocab":
            counts.oov[c.name][split][0] += int((in_split == OOV_ID).sum())
            counts.oov[c.name][split][1] += int((in_split != NULL_ID).sum())


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
