"""The dataset contract: `schema.yaml` plus `train/`, `valid/`, `test/` directories of Parquet files.

Reading side: `DatasetSchema.load(dir)` parses schema.yaml (the configs' YAML parser, unknown keys are
errors naming the key path) into frozen dataclasses; the trainer and the evaluator use `input_spec()`,
`split_paths(split)` and `columns()`. Writing side: `SplitWriter` streams Arrow tables into a split's
Parquet files (zstd, statistics, exact row groups) and `DatasetSchema.save` writes schema.yaml.
docs/DATA.md is the human-readable reference of every key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.inputs import InputSpec, Pooling, SparseFeature, Task, TaskKind
from models.typed_config import ConfigError, dump_yaml, from_dict, parse_yaml, to_dict
from pipeline.runtime.atomic import atomic_write_text

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.yaml"
SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1


class DataError(ValueError):
    """Bad data in a Parquet file; the message names the file, column and row group."""


# prep key: a digest of what the dataset's feature values mean (vocabularies, normalisation, hashing).
# Two datasets with the same digest encode a raw row the same way, so a model trained on one scores
# the other as it was trained; `mtrec evaluate` refuses a differing one (docs/DATA.md).
ENCODING_KEY = "encoding_sha256"


def encoding_digest(parts: Any, texts: Iterable[str] = ()) -> str:
    """sha256 of `parts` (JSON, keys sorted) followed by `texts` (e.g. vocabulary values, in order)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output function (Steele, Lea & Flood 2014) applied elementwise: int64/uint64 -> uint64."""
    z = x.astype(np.uint64) + _GOLDEN_GAMMA  # uint64 arithmetic wraps modulo 2^64, as intended
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_ids_into_range(ids: np.ndarray, num_embeddings: int) -> np.ndarray:
    """The documented id hash of `hashed: true` features: splitmix64(id) mod num_embeddings, as int64."""
    return (splitmix64(ids) % np.uint64(num_embeddings)).astype(np.int64)


class DatasetExistsError(FileExistsError, ValueError):
    """`mtrec prepare --out` names something that must not be replaced (a ValueError, so the CLI
    reports it as bad input)."""


@dataclass(frozen=True)
class DenseColumn:
    """A dense input: a float32 column (dim None) or a fixed_size_list<float32>[dim] column."""

    column: str
    dim: Optional[int] = None

    @property
    def width(self) -> int:
        return 1 if self.dim is None else self.dim

    def validate(self, path: str) -> None:
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"{path}.dim: must be >= 1, got {self.dim}")


@dataclass(frozen=True)
class SparseColumn:
    """An id feature: one int64 id per row (layout scalar) or a list<int64> of ids (layout list).

    hashed: raw ids are mapped into [0, num_embeddings) by `arrow_to_batch.hash_ids_into_range`;
    otherwise every id must already lie in [0, num_embeddings) (the reader rejects others).
    """

    name: str
    column: str
    num_embeddings: int
    embedding_dim: int = 8
    pooling: Pooling = "sum"
    hashed: bool = False
    layout: Literal["scalar", "list"] = "scalar"

    def validate(self, path: str) -> None:
        if self.num_embeddings < 1:
            raise ConfigError(f"{path}.num_embeddings: must be >= 1, got {self.num_embeddings}")
        if self.embedding_dim < 1:
            raise ConfigError(f"{path}.embedding_dim: must be >= 1, got {self.embedding_dim}")


@dataclass(frozen=True)
class TaskColumn:
    """A task: its label column and, for tasks defined on a subset of rows, a 0/1 mask column."""

    name: str
    label: str
    kind: TaskKind = "binary"
    loss_weight: float = 1.0
    mask: Optional[str] = None


@dataclass(frozen=True)
class SplitInfo:
    """Metadata of one split (written by `mtrec prepare`, informative for readers)."""

    rows: int
    files: int
    positive_rates: dict[str, float] = field(default_factory=dict)  # binary tasks, over masked-in rows


@dataclass(frozen=True)
class DatasetSchema:
    """Parsed schema.yaml. `root` is the directory it was loaded from (never written to the file)."""

    format_version: int = FORMAT_VERSION
    name: str = ""
    key: str = "row_id"
    dense: tuple[DenseColumn, ...] = ()
    sparse: tuple[SparseColumn, ...] = ()
    tasks: tuple[TaskColumn, ...] = ()
    weight: Optional[str] = None
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    prep: dict[str, Any] = field(default_factory=dict)  # provenance (how it was made); no reader uses it
    root: Optional[str] = None

    # -- validation -------------------------------------------------------------------------------
    def validate(self, path: str) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(f"{path}.format_version: {self.format_version} is not supported ({FORMAT_VERSION})")
        if not self.name:
            raise ConfigError(f"{path}.name: must be a non-empty string")
        if not self.tasks:
            raise ConfigError(f"{path}.tasks: at least one task is required")
        _require_unique([s.name for s in self.sparse], f"{path}.sparse", "name")
        _require_unique([t.name for t in self.tasks], f"{path}.tasks", "name")
        inputs = [self.key] + [d.column for d in self.dense] + [s.column for s in self.sparse]
        _require_unique(inputs, path, "key/dense/sparse column")
        leaks = sorted(set(inputs) & {c for t in self.tasks for c in (t.label, t.mask) if c})
        if leaks:
            raise ConfigError(f"{path}.tasks: label/mask column(s) {leaks} are also key or feature columns")
        unknown_splits = sorted(set(self.splits) - set(SPLITS))
        if unknown_splits:
            raise ConfigError(f"{path}.splits: unknown split(s) {unknown_splits}; allowed: {list(SPLITS)}")

    # -- file I/O -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, dataset_dir: str | os.PathLike) -> "DatasetSchema":
        """Parse `<dataset_dir>/schema.yaml`; ConfigError names the file and the key path on problems."""
        file = Path(dataset_dir) / SCHEMA_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no schema.yaml (is {dataset_dir} a dataset written by `mtrec prepare`?)")
        raw = parse_yaml(file.read_text(encoding="utf-8"), str(file))  # the configs' parser (docs/TRAINING.md)
        if isinstance(raw, dict) and "root" in raw:
            raise ConfigError(f"{file}: root: not allowed in schema.yaml (set from the file's location)")
        try:
            schema = from_dict(cls, raw)
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from None
        return replace(schema, root=str(Path(dataset_dir)))

    def to_yaml(self) -> str:
        """The text of schema.yaml (without `root`)."""
        data = to_dict(replace(self, root=None))
        del data["root"]
        header = "# mtrec dataset schema; every key is described in docs/DATA.md\n"
        return header + dump_yaml(data, sort_keys=False)

    def save(self, dataset_dir: str | os.PathLike) -> None:
        """Write schema.yaml into `dataset_dir` atomically."""
        atomic_write_text(Path(dataset_dir) / SCHEMA_FILE, self.to_yaml())

    # -- what the trainer and the evaluator call ------------------------------------------------------
    def split_paths(self, split: str) -> list[str]:
        """Sorted Parquet files of `split` (train, valid or test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        if self.root is None:
            raise ValueError("split_paths needs a schema loaded from a directory (DatasetSchema.load)")
        directory = Path(self.root) / split
        paths = sorted(str(p) for p in directory.glob("*.parquet")) if directory.is_dir() else []
        if not paths:
            raise FileNotFoundError(f"{directory}: no *.parquet files for split {split!r}")
        return paths

    def columns(self, with_keys: bool = True) -> list[str]:
        """The projection: every column the reader needs, in a fixed order, without duplicates."""
        names = ([self.key] if with_keys else []) + [d.column for d in self.dense] + [s.column for s in self.sparse]
        names += [t.label for t in self.tasks] + [t.mask for t in self.tasks if t.mask]
        names += [self.weight] if self.weight else []
        return list(dict.fromkeys(names))

    def input_spec(self) -> InputSpec:
        return InputSpec(
            dense_dim=self.dense_dim,
            sparse_features=tuple(
                SparseFeature(s.name, s.num_embeddings, s.embedding_dim, s.pooling) for s in self.sparse
            ),
            tasks=tuple(Task(t.name, t.kind, t.loss_weight) for t in self.tasks),
        )

    @property
    def encoding(self) -> Optional[str]:
        """The digest of the feature encoding (ENCODING_KEY), None for datasets written without one."""
        return self.prep.get(ENCODING_KEY)

    def check_encoded_like(self, trained: "DatasetSchema", accept: bool = False,
                           anyway: str = "scoring it anyway (--different-encoding)") -> None:
        """Refuse (DataError) to feed this dataset to a model trained on `trained` when their encoding
        digests differ: the same ids and dense values would mean other things to the model. Datasets
        without a digest (written before it existed, or generated) are not checked; `accept` lets a
        differing one through with a warning that ends with `anyway`."""
        if self.encoding is None or trained.encoding is None or self.encoding == trained.encoding:
            return
        what = (f"{self.root} ({self.name!r}) is encoded differently from the data the model was trained on "
                f"({trained.name!r}, schema stored in {trained.root}): other vocabularies, normalisation or hashing")
        if accept:
            log.warning("%s; %s", what, anyway)
            return
        how = ("encode the logs with the training data's statistics: `mtrec prepare table --spec SPEC --input LOGS "
               "--reuse-stats TRAINING_DATASET --out DIR`" if "fitted" in trained.prep else
               "prepare it with the same options as the training data (e.g. the same --preprocess)")
        raise DataError(f"{what}, so its ids and feature values would mean other things to the model. To score "
                        f"it, {how}; or pass --different-encoding to score it anyway")

    @property
    def dense_dim(self) -> int:
        return sum(d.width for d in self.dense)

    def summary(self) -> str:
        """A few human-readable lines: features, tasks, rows and positive rates per split."""
        lines = [f"dataset {self.name!r} at {self.root}: dense_dim {self.dense_dim}, {len(self.sparse)} sparse "
                 f"feature(s), tasks {[t.name for t in self.tasks]}"]
        for split, info in self.splits.items():
            rates = ", ".join(f"{task} {rate:.2%}" for task, rate in info.positive_rates.items())
            lines.append(f"  {split}: {info.rows:,} rows in {info.files} file(s); positive rates: {rates or '-'}")
        return "\n".join(lines)


def _require_unique(values: list[str], path: str, what: str) -> None:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ConfigError(f"{path}: duplicate {what}(s) {dupes}")


def existing_dataset(out: str | os.PathLike, params: dict[str, Any], *, overwrite: bool) -> Optional[DatasetSchema]:
    """The re-run policy of `mtrec prepare` for an existing `out`.

    Returns the existing schema when `out` is a complete dataset whose `prep.params` equal `params`
    (nothing to do); None when `out` must be (re)written. Raises DatasetExistsError when `out`
    exists with other parameters or is not a dataset, unless `overwrite`.
    """
    out = Path(out)
    if not out.exists() or overwrite:
        return None
    if not (out / SCHEMA_FILE).is_file():
        raise DatasetExistsError(f"{out} exists and is not an mtrec dataset; remove it or choose another --out")
    existing = DatasetSchema.load(out)
    have = existing.prep.get("params", {})
    wanted = parse_yaml(dump_yaml(params, sort_keys=False), "params")  # normalise as stored (tuples -> lists)
    if have != wanted:
        changed = sorted(k for k in set(wanted) | set(have) if have.get(k) != wanted.get(k))
        raise DatasetExistsError(
            f"{out} already holds a dataset made with other parameters ({', '.join(changed)} differ); "
            "remove it or choose another --out"
        )
    return existing


class SplitWriter:
    """Streams Arrow tables into `<dataset_dir>/<split>/part-NNNNN.parquet`.

    Row groups hold exactly `row_group_rows` rows (the last one fewer) and a new file starts every
    `file_rows` rows, however the input is chunked, so the output does not depend on how it was fed.
    Compression zstd, column statistics on (the contract of docs/DATA.md). Positive rates of the
    binary `tasks` are tallied on the way (over rows whose mask is 1). Columns in `byte_stream_split`
    (high-entropy floats, e.g. synthetic dense inputs) use the BYTE_STREAM_SPLIT encoding instead of
    a dictionary: for random float32 it compresses better under zstd and decodes faster [project].
    """

    def __init__(self, dataset_dir: Path, split: str, arrow_schema: pa.Schema, *, row_group_rows: int,
                 file_rows: int, tasks: tuple[TaskColumn, ...] = (), byte_stream_split: tuple[str, ...] = ()) -> None:
        if row_group_rows < 1 or file_rows < row_group_rows or file_rows % row_group_rows:
            raise ValueError(
                f"file_rows ({file_rows}) must be a positive multiple of row_group_rows ({row_group_rows})"
            )
        self.split = split
        self.directory = Path(dataset_dir) / split
        self.directory.mkdir(parents=True, exist_ok=True)
        self.arrow_schema = arrow_schema
        leaf = {f.name: f"{f.name}.list.element" if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                else f.name for f in arrow_schema}
        self._encodings = {"use_byte_stream_split": [leaf[c] for c in byte_stream_split] or False,
                           "use_dictionary": [p for c, p in leaf.items() if c not in byte_stream_split]}
        self.row_group_rows = row_group_rows
        self.file_rows = file_rows
        self.rows = 0
        self.files = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._rows_in_file = 0
        self._binary = [t for t in tasks if t.kind == "binary"]
        self._positives = np.zeros(len(self._binary))
        self._active = np.zeros(len(self._binary))

    def write(self, table: pa.Table) -> None:
        """Append `table` (same schema); full row groups are written as soon as they are complete."""
        for i, task in enumerate(self._binary):
            labels = np.nan_to_num(table.column(task.label).to_numpy().astype(np.float64))  # null: masked out
            mask = table.column(task.mask).to_numpy().astype(np.float64) if task.mask else np.ones_like(labels)
            self._positives[i] += float(labels @ mask)
            self._active[i] += float(mask.sum())
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._write_row_group(self.row_group_rows)

    def close(self) -> SplitInfo:
        """Flush the last (short) row group and close the current file; returns rows and files."""
        if self._pending_rows:
            self._write_row_group(self._pending_rows)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        rates = {t.name: float(p / n) for t, p, n in zip(self._binary, self._positives, self._active) if n}
        return SplitInfo(rows=self.rows, files=self.files, positive_rates=rates)

    def _write_row_group(self, rows: int) -> None:
        pending = pa.concat_tables(self._pending)
        group, rest = pending.slice(0, rows), pending.slice(rows)
        self._pending, self._pending_rows = [rest], rest.num_rows
        if self._writer is None or self._rows_in_file >= self.file_rows:
            self._open_next_file()
        self._writer.write_table(group, row_group_size=rows)
        self._rows_in_file += rows
        self.rows += rows

    def _open_next_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.directory / f"part-{self.files:05d}.parquet"
        self._writer = pq.ParquetWriter(path, self.arrow_schema, compression="zstd", write_statistics=True,
                                        **self._encodings)
        self.files += 1
        self._rows_in_file = 0
