"""`mtrec prepare synthetic`: the MMoE generator with controllable task correlation (docs/MATH.md §8).

Published part (MMoE §3.2, constants from PLE §5.2.1): orthonormal u_1..u_T by Gram-Schmidt,
w_1 = c u_1, w_t = c (p u_1 + sqrt(1 - p^2) u_t), alpha/beta ~ N(0, I_m) shared by all tasks,
x ~ N(0, I_d), s_t = w_t . x, y_t = s_t + sum_i sin(alpha_i s_t + beta_i) + eps_t, eps_t ~ N(0, noise_std^2).

Extensions [project]:
- T > 2 tasks (mutually orthogonal u_t, so cos(w_1, w_t) = p and cos(w_s, w_t) = p^2).
- Binary labels 1[y_t > threshold_t], threshold_t = median of y_t on a fixed calibration sample
  (`calibration_rows` rows drawn after the geometry from the geometry stream), stored in metadata.
- Optional regression task `t1_value` = raw y_1.
- Sparse id features f = 0..F-1 that look like a recommendation log: per row Poisson(ids_per_row)
  ids (so some lists are empty), id ranks from a bounded Zipf(zipf_exponent) law over `vocab`
  ranks, raw ids scattered over int63 by splitmix64 (the schema marks them hashed). Each raw id has
  pseudo-embeddings z_k(id) ~ U(-sqrt3, sqrt3) (unit variance, from a salted splitmix64 of the id)
  with the same task geometry as the dense part: e_1 = z_0, e_t = p z_0 + sqrt(1 - p^2) z_t. The
  sparse term sparse_scale / sqrt(F) * sum_f mean_{id in row's list f} e_t(id) is added to s_t
  before the sin terms; an empty list contributes 0.

Streaming and determinism: SeedSequence(seed).spawn(1 + n_chunks); child 0 draws the geometry (and
then the calibration sample), child 1+j draws chunk j of exactly `chunk_rows` rows (the last one
fewer). Chunks are written as they are made, so memory does not grow with `rows`, and the data only
depend on the spec, not on row group or file sizes. Rows 0..n_train-1 form train, then valid, then
test; row_id = global row index.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from models.typed_config import to_dict
from pipeline.runtime.atomic import atomic_dir
from pipeline.data.schema import (ENCODING_KEY, DatasetSchema, DenseColumn, SparseColumn, SplitInfo, SplitWriter,
                                  TaskColumn, encoding_digest, existing_dataset, splitmix64)

log = logging.getLogger(__name__)

_SQRT3 = math.sqrt(3.0)


class GeneratedRows:
    """How a generator's spec (`rows`, `valid_fraction`, `test_fraction`, `chunk_rows`) splits and
    chunks its rows, and what its features mean; shared by SyntheticSpec and the criteo-like spec."""

    # Parameters that only choose which rows are drawn and how they are split and stored; every other
    # one shapes the generating model (its seed included), so it is part of what an id or value means.
    ROW_PARAMS = ("rows", "sample", "valid_fraction", "test_fraction", "chunk_rows", "row_group_rows",
                  "row_groups_per_file")

    def encoding_digest(self, generator: str) -> str:
        """The dataset's encoding digest (pipeline/data/schema.py): the same for another draw of
        rows from the same model (e.g. criteo-like `--sample 1`, or other `--rows`)."""
        return encoding_digest({"generator": generator,
                                **{k: v for k, v in to_dict(self).items() if k not in self.ROW_PARAMS}})

    @property
    def split_rows(self) -> dict[str, int]:
        valid = round(self.rows * self.valid_fraction)
        test = round(self.rows * self.test_fraction)
        return {"train": self.rows - valid - test, "valid": valid, "test": test}

    @property
    def num_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)


@dataclass(frozen=True)
class SyntheticSpec(GeneratedRows):
    """Everything that determines a synthetic dataset (the data depend on nothing else)."""

    rows: int
    tasks: int = 2
    correlation: float = 0.5
    seed: int = 0
    dense_dim: int = 512
    sparse_features: int = 4
    vocab: int = 1_000_000
    regression: bool = False
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    row_group_rows: int = 65536
    row_groups_per_file: int = 16
    c: float = 1.0  # |w_t|
    sin_terms: int = 10  # m
    noise_std: float = 0.1  # MMoE's N(0, 0.01) read as a variance (docs/MATH.md §8.6)
    chunk_rows: int = 16384
    calibration_rows: int = 65536
    zipf_exponent: float = 1.2
    ids_per_row: float = 3.0
    sparse_scale: float = 1.0
    embedding_dim: int = 8

    def validate(self) -> None:
        problems = []
        if self.rows < 1 or self.chunk_rows < 1 or self.calibration_rows < 1 or self.row_group_rows < 1:
            problems.append("rows, chunk_rows, calibration_rows and row_group_rows must be >= 1")
        if not 1 <= self.tasks <= self.dense_dim:
            problems.append(f"tasks must be in [1, dense_dim={self.dense_dim}], got {self.tasks}")
        if not -1.0 <= self.correlation <= 1.0:
            problems.append(f"correlation must be in [-1, 1], got {self.correlation}")
        if self.valid_fraction < 0 or self.test_fraction < 0 or self.valid_fraction + self.test_fraction >= 1:
            problems.append("valid_fraction and test_fraction must be >= 0 with a sum < 1")
        if self.sparse_features < 0 or self.vocab < 1 or self.ids_per_row < 0 or self.zipf_exponent <= 0:
            problems.append("need sparse_features >= 0, vocab >= 1, ids_per_row >= 0, zipf_exponent > 0")
        if self.noise_std < 0 or self.sin_terms < 0 or self.row_groups_per_file < 1 or self.embedding_dim < 1:
            problems.append("need noise_std >= 0, sin_terms >= 0, row_groups_per_file >= 1, embedding_dim >= 1")
        if problems:
            raise ValueError("synthetic spec: " + "; ".join(problems))


@dataclass(frozen=True)
class Geometry:
    """Per-dataset constants: task directions w [T, d], shared alpha/beta [m], id salts [F, T]."""

    w: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    salts: np.ndarray  # uint64 salt of pseudo-embedding component k of feature f


@dataclass(frozen=True)
class Chunk:
    """One generated chunk of `rows` rows: x [rows, d] float32, raw y [rows, T] float64, per-feature
    id lengths [rows] int32 and raw ids (int64, concatenated per row)."""

    x: np.ndarray
    y: np.ndarray
    lengths: list[np.ndarray]
    ids: list[np.ndarray]


def make_geometry(spec: SyntheticSpec, rng: np.random.Generator) -> Geometry:
    """Gram-Schmidt directions and the shared sin parameters (docs/MATH.md §8.2-8.4, T > 2 extension)."""
    g = rng.standard_normal((spec.tasks, spec.dense_dim))
    u = np.zeros_like(g)
    for t in range(spec.tasks):
        v = g[t] - u[:t].T @ (u[:t] @ g[t])
        u[t] = v / np.linalg.norm(v)
    p = spec.correlation
    w = np.empty_like(u)
    w[0] = spec.c * u[0]
    w[1:] = spec.c * (p * u[0] + math.sqrt(1.0 - p * p) * u[1:])
    alpha = rng.standard_normal(spec.sin_terms)
    beta = rng.standard_normal(spec.sin_terms)
    salts = rng.integers(0, np.iinfo(np.int64).max, size=(spec.sparse_features, spec.tasks), dtype=np.int64)
    return Geometry(w=w, alpha=alpha, beta=beta, salts=salts.astype(np.uint64))


def zipf_ranks(rng: np.random.Generator, size: int, vocab: int, exponent: float) -> np.ndarray:
    """Ranks in [0, vocab) from a bounded power law P(rank = r) ~ (r + 1)^-exponent (continuous
    inverse-CDF approximation, vectorised)."""
    u = rng.random(size)
    if exponent == 1.0:
        x = np.power(vocab + 1.0, u)
    else:
        e = 1.0 - exponent
        x = np.power(1.0 + u * (np.power(vocab + 1.0, e) - 1.0), 1.0 / e)
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, vocab - 1)


def raw_ids(ranks: np.ndarray, feature: int) -> np.ndarray:
    """Scatter ranks of feature f over non-negative int63 ids (what a real log's raw ids look like)."""
    return (splitmix64(ranks + (feature << 40)) >> np.uint64(1)).astype(np.int64)


def unit_uniform(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> U(-sqrt3, sqrt3) (mean 0, variance 1) from their top 53 bits."""
    return (hashes >> np.uint64(11)) * (2.0 * _SQRT3 / 2.0**53) - _SQRT3


def _sparse_term(spec: SyntheticSpec, geo: Geometry, lengths: list[np.ndarray], ids: list[np.ndarray],
                 rows: int) -> np.ndarray:
    """[rows, T]: sparse_scale / sqrt(F) * sum_f mean over the row's ids of e_t(f, id)."""
    p = spec.correlation
    term = np.zeros((rows, spec.tasks))
    for f, (lens, fids) in enumerate(zip(lengths, ids)):
        row_of_id = np.repeat(np.arange(rows), lens)
        z = [unit_uniform(splitmix64(fids.astype(np.uint64) ^ geo.salts[f, k])) for k in range(spec.tasks)]
        e = [z[0]] + [p * z[0] + math.sqrt(1.0 - p * p) * z[t] for t in range(1, spec.tasks)]
        count = np.maximum(lens, 1)
        for t in range(spec.tasks):
            term[:, t] += np.bincount(row_of_id, weights=e[t], minlength=rows) / count
    return term * (spec.sparse_scale / math.sqrt(len(lengths)))


def generate_chunk(spec: SyntheticSpec, geo: Geometry, rng: np.random.Generator, rows: int) -> Chunk:
    """Draw `rows` rows: x, then per feature lengths and ids, then the noise (fixed order)."""
    x = rng.standard_normal((rows, spec.dense_dim), dtype=np.float32)
    lengths, ids = [], []
    for f in range(spec.sparse_features):
        lens = rng.poisson(spec.ids_per_row, rows).astype(np.int32)
        lengths.append(lens)
        ids.append(raw_ids(zipf_ranks(rng, int(lens.sum()), spec.vocab, spec.zipf_exponent), f))
    s = (x @ geo.w.T.astype(np.float32)).astype(np.float64)  # float32 products: no [rows, d] float64 copy
    if spec.sparse_features:
        s += _sparse_term(spec, geo, lengths, ids, rows)
    y = s + np.sin(s[:, :, None] * geo.alpha + geo.beta).sum(axis=2)
    y += spec.noise_std * rng.standard_normal((rows, spec.tasks))
    return Chunk(x=x, y=y, lengths=lengths, ids=ids)


def task_columns(spec: SyntheticSpec) -> tuple[TaskColumn, ...]:
    tasks = tuple(TaskColumn(name=f"t{t + 1}", label=f"label_t{t + 1}") for t in range(spec.tasks))
    if spec.regression:
        tasks += (TaskColumn(name="t1_value", label="label_t1_value", kind="regression"),)
    return tasks


def _to_table(spec: SyntheticSpec, chunk: Chunk, first_row: int, thresholds: np.ndarray) -> pa.Table:
    rows = chunk.x.shape[0]
    columns = {
        "row_id": pa.array(np.arange(first_row, first_row + rows, dtype=np.int64)),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(chunk.x.reshape(-1)), spec.dense_dim),
    }
    for f, (lens, ids) in enumerate(zip(chunk.lengths, chunk.ids)):
        offsets = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]).astype(np.int32)
        columns[f"s{f}"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
    for t in range(spec.tasks):
        columns[f"label_t{t + 1}"] = pa.array((chunk.y[:, t] > thresholds[t]).astype(np.float32))
    if spec.regression:
        columns["label_t1_value"] = pa.array(chunk.y[:, 0].astype(np.float32))
    return pa.table(columns)


def _schema(spec: SyntheticSpec, splits: dict, prep: dict) -> DatasetSchema:
    return DatasetSchema(
        name=f"synthetic-mmoe-T{spec.tasks}-p{spec.correlation:g}",
        dense=(DenseColumn("x", dim=spec.dense_dim),),
        sparse=tuple(SparseColumn(name=f"s{f}", column=f"s{f}", num_embeddings=spec.vocab,
                                  embedding_dim=spec.embedding_dim, hashed=True, layout="list")
                     for f in range(spec.sparse_features)),
        tasks=task_columns(spec),
        splits=splits,
        prep=prep,
    )


class SyntheticGenerator:
    """The dataset of one spec as a sequence of chunks; chunk j can be made on its own."""

    def __init__(self, spec: SyntheticSpec) -> None:
        spec.validate()
        self.spec = spec
        self._streams = np.random.SeedSequence(spec.seed).spawn(1 + spec.num_chunks)
        geometry_rng = np.random.default_rng(self._streams[0])
        self.geometry = make_geometry(spec, geometry_rng)
        calibration = generate_chunk(spec, self.geometry, geometry_rng, spec.calibration_rows)
        self.thresholds = np.median(calibration.y, axis=0)

    def chunk(self, j: int) -> Chunk:
        rows = min(self.spec.chunk_rows, self.spec.rows - j * self.spec.chunk_rows)
        return generate_chunk(self.spec, self.geometry, np.random.default_rng(self._streams[1 + j]), rows)

    def table(self, j: int) -> pa.Table:
        """Chunk j as the Arrow table that is written (global row ids)."""
        return _to_table(self.spec, self.chunk(j), j * self.spec.chunk_rows, self.thresholds)

    def provenance(self) -> dict:
        w = self.geometry.w
        cosines = [float(w[0] @ w[t] / (np.linalg.norm(w[0]) * np.linalg.norm(w[t]))) for t in range(len(w))]
        return {
            "params": to_dict(self.spec),
            "generator": "MMoE synthetic (docs/MATH.md §8) with [project] extensions: T > 2, binary labels by "
                         "calibrated median, sparse Zipf id features with hashed pseudo-embeddings "
                         "(pipeline/data/synthetic.py docstring)",
            "chunk_rows": self.spec.chunk_rows,
            "noise_std": self.spec.noise_std,
            "binary_thresholds": {f"t{t + 1}": float(v) for t, v in enumerate(self.thresholds)},
            "cos_w1_wt": cosines,
            "split_rows": "row_id = global row index; train = first rows, then valid, then test",
            ENCODING_KEY: self.spec.encoding_digest("synthetic"),
        }


class SplitSink:
    """Writes consecutive chunks of a generated log (global rows 0..rows-1) into train, then valid,
    then test, each through its own SplitWriter; the row counts per split are fixed in advance."""

    def __init__(self, dataset_dir: str | os.PathLike, split_rows: dict[str, int], **writer_options) -> None:
        self.dataset_dir, self.split_rows, self.writer_options = dataset_dir, split_rows, writer_options
        self.splits: dict[str, SplitInfo] = {}
        self._writer: Optional[SplitWriter] = None

    def slices(self, first_row: int, rows: int) -> list[tuple[str, int, int]]:
        """(split, lo, hi) of the non-empty pieces of chunk rows first_row.. (lo/hi chunk-relative)."""
        parts, split_start = [], 0
        for split, split_rows in self.split_rows.items():
            lo = max(split_start, first_row) - first_row
            hi = min(split_start + split_rows, first_row + rows) - first_row
            if hi > lo:
                parts.append((split, lo, hi))
            split_start += split_rows
        return parts

    def write(self, table: pa.Table, first_row: int) -> list[tuple[str, int, int]]:
        """Write `table` (global rows first_row..); returns the pieces written (see `slices`)."""
        parts = self.slices(first_row, table.num_rows)
        for split, lo, hi in parts:
            if self._writer is None or split != self._writer.split:  # splits are contiguous: the previous one is done
                if self._writer is not None:
                    self.splits[self._writer.split] = self._writer.close()
                self._writer = SplitWriter(self.dataset_dir, split, table.schema, **self.writer_options)
            self._writer.write(table.slice(lo, hi - lo))
        return parts

    def close(self) -> dict[str, SplitInfo]:
        if self._writer is not None:
            self.splits[self._writer.split] = self._writer.close()
            self._writer = None
        return self.splits


def prepare_synthetic(spec: SyntheticSpec, out: str | os.PathLike, overwrite: bool = False) -> str:
    """Stream the dataset of `spec` into `out` (atomically); returns a summary.

    Same re-run policy as census: an existing dataset with the same spec is kept, another one is
    an error unless `overwrite`.
    """
    spec.validate()
    existing = existing_dataset(out, to_dict(spec), overwrite=overwrite)
    if existing is not None:
        return f"{out} is up to date (same spec)\n{existing.summary()}"
    generator = SyntheticGenerator(spec)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        sink = SplitSink(tmp, spec.split_rows, row_group_rows=spec.row_group_rows,
                         file_rows=spec.row_group_rows * spec.row_groups_per_file, tasks=task_columns(spec),
                         byte_stream_split=("x",))
        with tqdm(total=spec.rows, unit="rows", desc="synthetic", disable=None) as progress:
            for j in range(spec.num_chunks):
                table = generator.table(j)
                sink.write(table, first_row=j * spec.chunk_rows)
                progress.update(table.num_rows)
        _schema(spec, sink.close(), generator.provenance()).save(tmp)
    log.info("synthetic dataset written to %s", out)
    return DatasetSchema.load(out).summary()
