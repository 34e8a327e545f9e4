"""`mtrec prepare synthetic --preset criteo-like`: a click log at industrial scale with known truth.

Features (per row):
- `dense`: 13 counters. Counter j is present with probability `DENSE_PRESENT[j]`; a present count
  is floor(LogNormal(DENSE_MU[j], DENSE_SIGMA[j])). Stored value x_j = log(1 + count), and a
  missing counter is stored as 0 (the documented fill: the dataset contract wants float32 without
  nulls; the log-and-zero-fill is DLRM's preprocessing of Criteo's counters). The labels depend on
  the stored (filled) values, so the model sees exactly what the generator used.
- `c1`..`c26`: one id each. Raw id = a rank drawn from a bounded Zipf law (exponent
  `CATEGORICAL_EXPONENTS[f]`) over `categorical_cardinalities[f]` ranks (Criteo-like: five features
  over 25M raw ids, a long tail of small ones). Raw ids are the ranks themselves (small integers
  compress well; the reader hashes them anyway).
- `m1`..`m3`: id lists (multi-hot, e.g. recent ads, pages, tags): Poisson(`multi_hot_lengths[m]`)
  ids per row (empty lists allowed), Zipf ranks over `multi_hot_cardinalities[m]`, mean pooling.

Tables (`hashed: true`): table rows = min(raw cardinality, `max_table_rows`), 10M by default (the
hashing cap of DLRM's `max_ind_range`); ids reach their table through the contract's hash
(`schema.hash_ids_into_range`), so tables over the cap have collisions. Embedding dim
`embedding_dim` (16) for every table.

Tasks, from a known generating model. Every raw id has three latent effects
z_k(f, id) ~ U(-sqrt3, sqrt3) (salted splitmix64 of the id, unit variance); per task k the effect
is e_1 = z_1, e_k = rho z_1 + sqrt(1 - rho^2) z_k (rho = `task_correlation`). With x~ the
standardised dense values (mean/std of the calibration sample),
    s_k = sum_j C[k, j] x~_j + sum_f A[f] e_k(f, id_f) + sum_m B[m] mean_{id in list m} e_k(m, id)
          + gamma x~_1 e_k(c2, id)
(A, B, C drawn once from the geometry stream and scaled to `categorical_scale`, `multi_hot_scale`,
`dense_scale`; gamma = `interaction_scale`).
- `click` ~ Bernoulli(sigmoid(b_click + s_1)), b_click set so that the mean click probability on
  the calibration sample is `click_rate` (4%).
- `conversion` ~ Bernoulli(sigmoid(b_conv + s_2)), defined only where click = 1 (null elsewhere;
  the task's mask column is `click`), b_conv set so that the conversion rate among clicks is
  `conversion_rate`.
- `dwell` = 2 + s_3 / 2 + N(0, `dwell_noise`^2) (log seconds; regression, every row).
The oracle (the true probabilities / the noise-free dwell) is scored on the test split with the
same metric code as `mtrec evaluate` and stored in schema.yaml `prep.oracle`: the best AUC/NE any
model can reach on this test split.

On disk: ids int64 (the contract), labels int8, dwell float32, zstd. Streaming and determinism as
the MMoE generator (pipeline/data/synthetic.py): child 0 of SeedSequence(seed) draws the geometry
and the calibration sample, child 1+j chunk j (its child `sample` when sample > 0: other rows
from the same model, e.g. a scoring log); memory is one chunk.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from models.inputs import Task
from models.typed_config import to_dict
from pipeline.data.schema import (ENCODING_KEY, DatasetSchema, DenseColumn, SparseColumn, SplitInfo, TaskColumn,
                                  existing_dataset, splitmix64)
from pipeline.data.synthetic import GeneratedRows, SplitSink, unit_uniform, zipf_ranks
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.runtime.atomic import atomic_dir

log = logging.getLogger(__name__)

PRESET = "criteo-like"
# Raw cardinalities of the 26 categorical features: the shape of a large public click log
# (a few features with tens of millions of ids, a long tail of small ones).
CRITEO_LIKE_CARDINALITIES = (
    39_884_406, 39_043, 17_289, 7_420, 20_263, 3, 7_120, 1_543, 63, 38_532_951, 2_953_546, 403_346, 10,
    2_208, 11_938, 155, 4, 976, 14, 39_979_771, 25_641_295, 39_664_984, 585_935, 12_972, 108, 36)
CATEGORICAL_EXPONENTS = tuple(1.05 + 0.25 * ((7 * f) % 26) / 25 for f in range(26))  # 1.05 .. 1.30
DENSE_PRESENT = (0.55, 0.98, 0.78, 0.78, 0.97, 0.78, 0.95, 0.99, 0.95, 0.55, 0.95, 0.23, 0.78)
DENSE_MU = (0.5, 2.0, 1.0, 1.5, 7.0, 3.5, 1.5, 2.5, 4.0, 0.2, 1.0, 0.3, 2.0)
DENSE_SIGMA = (1.0, 1.5, 1.2, 1.0, 2.0, 1.5, 1.2, 1.0, 1.5, 0.6, 1.0, 0.8, 1.2)
TASKS = (TaskColumn(name="click", label="click"),
         TaskColumn(name="conversion", label="conversion", mask="click"),
         TaskColumn(name="dwell", label="dwell", kind="regression"))


@dataclass(frozen=True)
class CriteoLikeSpec(GeneratedRows):
    """Everything that determines a criteo-like dataset (the data depend on nothing else)."""

    rows: int
    seed: int = 0  # the generating model (geometry, calibration) and, with `sample`, the rows
    sample: int = 0  # another draw of rows from the same model (e.g. a scoring log): same oracle
    categorical_cardinalities: tuple[int, ...] = CRITEO_LIKE_CARDINALITIES
    multi_hot_cardinalities: tuple[int, ...] = (20_000_000, 2_000_000, 10_000)
    multi_hot_lengths: tuple[float, ...] = (6.0, 3.0, 2.0)
    multi_hot_exponent: float = 1.1
    max_table_rows: int = 10_000_000
    embedding_dim: int = 16
    click_rate: float = 0.04
    conversion_rate: float = 0.1
    task_correlation: float = 0.6
    dense_scale: float = 0.6
    categorical_scale: float = 1.2
    multi_hot_scale: float = 0.5
    interaction_scale: float = 0.3
    dwell_noise: float = 0.5
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    chunk_rows: int = 65536
    calibration_rows: int = 200_000
    row_group_rows: int = 65536
    row_groups_per_file: int = 16

    def validate(self) -> None:
        problems = []
        if min(self.rows, self.chunk_rows, self.calibration_rows, self.row_group_rows, self.row_groups_per_file) < 1:
            problems.append("rows, chunk_rows, calibration_rows, row_group_rows, row_groups_per_file must be >= 1")
        if not self.categorical_cardinalities or min(self.categorical_cardinalities) < 1:
            problems.append("need at least one categorical feature, every cardinality >= 1")
        if len(self.categorical_cardinalities) > len(CATEGORICAL_EXPONENTS):
            problems.append(f"at most {len(CATEGORICAL_EXPONENTS)} categorical features")
        if len(self.multi_hot_cardinalities) != len(self.multi_hot_lengths) or (
                self.multi_hot_cardinalities and min(self.multi_hot_cardinalities) < 1):
            problems.append("multi_hot_cardinalities (each >= 1) and multi_hot_lengths need the same length")
        if not 0 < self.click_rate < 1 or not 0 < self.conversion_rate < 1:
            problems.append("click_rate and conversion_rate must be in (0, 1)")
        if self.sample < 0:
            problems.append("sample must be >= 0")
        if not -1 <= self.task_correlation <= 1 or self.max_table_rows < 1 or self.embedding_dim < 1:
            problems.append("need task_correlation in [-1, 1], max_table_rows >= 1, embedding_dim >= 1")
        if self.valid_fraction < 0 or self.test_fraction <= 0 or self.valid_fraction + self.test_fraction >= 1:
            problems.append("need valid_fraction >= 0, test_fraction > 0, their sum < 1")
        if problems:
            raise ValueError("criteo-like spec: " + "; ".join(problems))

    def table_rows(self, cardinality: int) -> int:
        """The documented table-size rule: min(raw cardinality, max_table_rows)."""
        return min(cardinality, self.max_table_rows)


@dataclass(frozen=True)
class Geometry:
    """Per-dataset constants of the generating model (drawn from the geometry stream)."""

    dense_weights: np.ndarray  # C [3, 13]
    categorical_weights: np.ndarray  # A [F]
    multi_hot_weights: np.ndarray  # B [M]
    salts: np.ndarray  # uint64 [F + M, 3]: salt of latent k of feature f
    dense_mean: np.ndarray  # [13] of the stored values on the calibration sample
    dense_std: np.ndarray
    click_bias: float = 0.0
    conversion_bias: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """`rows` rows: dense [rows, 13] float32, categorical raw ids [F, rows] int64, multi-hot lengths
    and ids, the true scores s [rows, 3], then labels (click, conversion int8; dwell float32)."""

    dense: np.ndarray
    categorical: np.ndarray
    lengths: list[np.ndarray]
    lists: list[np.ndarray]
    scores: np.ndarray
    click: np.ndarray
    conversion: np.ndarray
    dwell: np.ndarray


def _normalised(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """n positive weights, a few large and many small (|N(0,1)|^2), with Euclidean norm `scale`."""
    w = rng.standard_normal(n) ** 2
    return w * (scale / np.linalg.norm(w)) if n else w


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bisect(f, lo: float = -30.0, hi: float = 30.0, steps: int = 80) -> float:
    """The root of increasing f on [lo, hi]."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


class CriteoLikeGenerator:
    """The dataset of one spec as a sequence of chunks; chunk j can be made on its own."""

    def __init__(self, spec: CriteoLikeSpec) -> None:
        spec.validate()
        self.spec = spec
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0,)))
        features = len(spec.categorical_cardinalities) + len(spec.multi_hot_cardinalities)
        geo = Geometry(
            dense_weights=rng.standard_normal((3, len(DENSE_MU))) * (spec.dense_scale / math.sqrt(len(DENSE_MU))),
            categorical_weights=_normalised(rng, len(spec.categorical_cardinalities), spec.categorical_scale),
            multi_hot_weights=_normalised(rng, len(spec.multi_hot_cardinalities), spec.multi_hot_scale),
            salts=rng.integers(0, np.iinfo(np.int64).max, size=(features, 3), dtype=np.int64).astype(np.uint64),
            dense_mean=np.zeros(len(DENSE_MU)), dense_std=np.ones(len(DENSE_MU)))
        self.geometry = geo
        sample = self._draw(rng, spec.calibration_rows, with_labels=False)  # standardise, then calibrate
        geo = Geometry(**{**vars(geo), "dense_mean": sample.dense.mean(0), "dense_std": sample.dense.std(0) + 1e-6})
        self.geometry = geo
        scores = self._scores(sample.dense, sample.categorical, sample.lengths, sample.lists)
        click_bias = _bisect(lambda b: _sigmoid(b + scores[:, 0]).mean() - spec.click_rate)
        p_click = _sigmoid(click_bias + scores[:, 0])
        conversion_bias = _bisect(lambda b: (p_click * _sigmoid(b + scores[:, 1])).sum() / p_click.sum()
                                  - spec.conversion_rate)
        self.geometry = Geometry(**{**vars(geo), "click_bias": click_bias, "conversion_bias": conversion_bias})

    # -- drawing -------------------------------------------------------------------------------------
    def chunk(self, j: int) -> Chunk:
        rows = min(self.spec.chunk_rows, self.spec.rows - j * self.spec.chunk_rows)
        key = (1 + j,) if self.spec.sample == 0 else (1 + j, self.spec.sample)
        return self._draw(np.random.default_rng(np.random.SeedSequence(self.spec.seed, spawn_key=key)), rows,
                          with_labels=True)

    def _draw(self, rng: np.random.Generator, rows: int, with_labels: bool) -> Chunk:
        """Dense, categorical, multi-hot, then the label noise (fixed order)."""
        spec = self.spec
        present = rng.random((rows, len(DENSE_MU))) < np.asarray(DENSE_PRESENT)
        counts = np.floor(np.exp(np.asarray(DENSE_MU) + np.asarray(DENSE_SIGMA) * rng.standard_normal(present.shape)))
        dense = np.where(present, np.log1p(counts), 0.0).astype(np.float32)
        categorical = np.stack([zipf_ranks(rng, rows, v, CATEGORICAL_EXPONENTS[f])
                                for f, v in enumerate(spec.categorical_cardinalities)])
        lengths, lists = [], []
        for v, mean_length in zip(spec.multi_hot_cardinalities, spec.multi_hot_lengths):
            lens = rng.poisson(mean_length, rows).astype(np.int32)
            lengths.append(lens)
            lists.append(zipf_ranks(rng, int(lens.sum()), v, spec.multi_hot_exponent))
        empty = np.zeros(0)
        if not with_labels:
            return Chunk(dense, categorical, lengths, lists, empty, empty, empty, empty)
        scores = self._scores(dense, categorical, lengths, lists)
        geo = self.geometry
        click = rng.random(rows) < _sigmoid(geo.click_bias + scores[:, 0])
        conversion = click & (rng.random(rows) < _sigmoid(geo.conversion_bias + scores[:, 1]))
        dwell = 2.0 + 0.5 * scores[:, 2] + spec.dwell_noise * rng.standard_normal(rows)
        return Chunk(dense, categorical, lengths, lists, scores, click.astype(np.int8), conversion.astype(np.int8),
                     dwell.astype(np.float32))

    def _effects(self, feature: int, ids: np.ndarray) -> np.ndarray:
        """[n, 3] task effects e_k(feature, id) of raw ids (correlated across tasks by rho)."""
        z = np.stack([unit_uniform(splitmix64(ids.astype(np.uint64) ^ self.geometry.salts[feature, k]))
                      for k in range(3)], axis=1)
        rho = self.spec.task_correlation
        z[:, 1:] = rho * z[:, :1] + math.sqrt(1.0 - rho * rho) * z[:, 1:]
        return z

    def _scores(self, dense: np.ndarray, categorical: np.ndarray, lengths: list[np.ndarray],
                lists: list[np.ndarray]) -> np.ndarray:
        """s [rows, 3] of the generating model (module docstring)."""
        geo = self.geometry
        rows = dense.shape[0]
        standard = (dense - geo.dense_mean) / geo.dense_std
        s = standard @ geo.dense_weights.T
        for f, ids in enumerate(categorical):
            effects = self._effects(f, ids)
            s += geo.categorical_weights[f] * effects
            if f == 1:
                s += self.spec.interaction_scale * standard[:, 1:2] * effects
        offset = len(categorical)
        for m, (lens, ids) in enumerate(zip(lengths, lists)):
            effects = self._effects(offset + m, ids)
            row_of_id = np.repeat(np.arange(rows), lens)
            mean = np.stack([np.bincount(row_of_id, weights=effects[:, k], minlength=rows) for k in range(3)], axis=1)
            s += geo.multi_hot_weights[m] * mean / np.maximum(lens, 1)[:, None]
        return s

    def truth(self, chunk: Chunk) -> np.ndarray:
        """[rows, 3] the oracle: P(click), P(conversion | click), E[dwell]."""
        geo = self.geometry
        return np.stack([_sigmoid(geo.click_bias + chunk.scores[:, 0]), _sigmoid(geo.conversion_bias + chunk.scores[:, 1]),
                         2.0 + 0.5 * chunk.scores[:, 2]], axis=1)

    # -- Arrow ---------------------------------------------------------------------------------------
    def table(self, chunk: Chunk, first_row: int) -> pa.Table:
        rows = chunk.dense.shape[0]
        columns: dict[str, pa.Array] = {
            "row_id": pa.array(np.arange(first_row, first_row + rows, dtype=np.int64)),
            "dense": pa.FixedSizeListArray.from_arrays(pa.array(chunk.dense.reshape(-1)), chunk.dense.shape[1]),
        }
        for f, ids in enumerate(chunk.categorical):
            columns[f"c{f + 1}"] = pa.array(ids)
        for m, (lens, ids) in enumerate(zip(chunk.lengths, chunk.lists)):
            offsets = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]).astype(np.int32)
            columns[f"m{m + 1}"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
        columns["click"] = pa.array(chunk.click)
        columns["conversion"] = pa.array(chunk.conversion, mask=chunk.click == 0)  # defined on clicks only
        columns["dwell"] = pa.array(chunk.dwell)
        return pa.table(columns)

    def schema(self, splits: dict[str, SplitInfo], prep: dict[str, Any]) -> DatasetSchema:
        spec = self.spec
        sparse = [SparseColumn(name=f"c{f + 1}", column=f"c{f + 1}", num_embeddings=spec.table_rows(v),
                               embedding_dim=spec.embedding_dim, hashed=True)
                  for f, v in enumerate(spec.categorical_cardinalities)]
        sparse += [SparseColumn(name=f"m{m + 1}", column=f"m{m + 1}", num_embeddings=spec.table_rows(v),
                                embedding_dim=spec.embedding_dim, pooling="mean", hashed=True, layout="list")
                   for m, v in enumerate(spec.multi_hot_cardinalities)]
        return DatasetSchema(name=PRESET, dense=(DenseColumn("dense", dim=len(DENSE_MU)),), sparse=tuple(sparse),
                             tasks=TASKS, splits=splits, prep=prep)

    def provenance(self) -> dict[str, Any]:
        geo = self.geometry
        return {
            "params": to_dict(self.spec),
            "generator": f"{PRESET} (pipeline/data/criteo_like.py docstring)",
            "dense_fill": "x = log(1 + count); a missing counter is stored as 0",
            "table_rows_rule": f"min(raw cardinality, max_table_rows={self.spec.max_table_rows})",
            "click_bias": float(geo.click_bias),
            "conversion_bias": float(geo.conversion_bias),
            ENCODING_KEY: self.spec.encoding_digest(PRESET),
        }


def oracle_metrics() -> MultiTaskMetrics:
    return MultiTaskMetrics([Task(t.name, t.kind) for t in TASKS], auc_mode="bounded")


def oracle_update(metrics: MultiTaskMetrics, truth: np.ndarray, chunk: Chunk, lo: int, hi: int) -> None:
    """Score the oracle on rows lo..hi of `chunk` (conversion only where click = 1)."""
    click = chunk.click[lo:hi].astype(np.float32)
    labels = np.stack([click, chunk.conversion[lo:hi].astype(np.float32), chunk.dwell[lo:hi]], axis=1)
    masks = np.stack([np.ones_like(click), click, np.ones_like(click)], axis=1)
    metrics.update(truth[lo:hi].astype(np.float32), labels, masks)


def oracle_summary(metrics: MultiTaskMetrics) -> dict[str, dict[str, Any]]:
    """Per task the oracle's headline metrics (AUC/NE/logloss or MSE) and its row count."""
    keys = ("count", "positive_rate", "auc", "ne", "logloss", "mse", "mae")
    return {task: {k: v for k, v in result.items() if k in keys}
            for task, result in metrics.compute()["tasks"].items()}


def prepare_criteo_like(spec: CriteoLikeSpec, out: str | os.PathLike, overwrite: bool = False) -> str:
    """Stream the dataset of `spec` into `out` (atomically); returns a summary with the oracle's
    test-split metrics. Same re-run policy as the other `mtrec prepare` datasets."""
    spec.validate()
    params = {"preset": PRESET, **to_dict(spec)}
    existing = existing_dataset(out, params, overwrite=overwrite)
    if existing is not None:
        return f"{out} is up to date (same spec)\n{_summary(existing)}"
    generator = CriteoLikeGenerator(spec)
    oracle = oracle_metrics()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        sink = SplitSink(tmp, spec.split_rows, row_group_rows=spec.row_group_rows,
                         file_rows=spec.row_group_rows * spec.row_groups_per_file, tasks=TASKS,
                         byte_stream_split=("dense",))
        with tqdm(total=spec.rows, unit="rows", desc=PRESET, disable=None) as progress:
            for j in range(spec.num_chunks):
                chunk = generator.chunk(j)
                parts = sink.write(generator.table(chunk, j * spec.chunk_rows), first_row=j * spec.chunk_rows)
                test = [(lo, hi) for split, lo, hi in parts if split == "test"]
                if test:
                    truth = generator.truth(chunk)
                    for lo, hi in test:
                        oracle_update(oracle, truth, chunk, lo, hi)
                progress.update(chunk.dense.shape[0])
        prep = {**generator.provenance(), "params": params, "oracle": {"split": "test", "tasks": oracle_summary(oracle)}}
        generator.schema(sink.close(), prep).save(tmp)
    log.info("%s dataset written to %s", PRESET, out)
    return _summary(DatasetSchema.load(out))


def _summary(schema: DatasetSchema) -> str:
    """The dataset summary plus the largest tables and the oracle line."""
    largest = sorted(schema.sparse, key=lambda s: -s.num_embeddings)[:3]
    oracle = schema.prep.get("oracle", {}).get("tasks", {})
    best = ", ".join(f"{t} AUC {m['auc']:.4f} NE {m['ne']:.4f}" if "auc" in m else f"{t} MSE {m['mse']:.4f}"
                     for t, m in oracle.items())
    return (f"{schema.summary()}\n  largest tables: "
            + ", ".join(f"{s.name} {s.num_embeddings:,} x {s.embedding_dim}" for s in largest)
            + f"\n  oracle on test (best achievable): {best}")
