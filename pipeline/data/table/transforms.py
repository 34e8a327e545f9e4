"""Feature transforms and the statistics they fit on the train split.

Pass 1 feeds train rows to the fitters (`DenseFitter`, `VocabCounter`, `QuantileSampler`), whose
`finish()` gives the frozen statistics (`DenseStats`, `Vocabulary`, bucket boundaries); pass 2
applies them to every split through `encode_dense` / `CategoricalEncoder`. Memory of the fitters is
bounded by the number of distinct values (vocabularies) or a fixed sample size (quantiles), never by
the number of rows. The statistics are written to schema.yaml `prep.fitted` (vocabularies to
`vocab/<feature>.parquet`) so a later import can apply exactly the same (`--reuse-stats`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.schema import hash_ids_into_range
from pipeline.data.table.hashing import fnv1a64
from pipeline.data.table.spec import CategoricalSpec, DenseSpec

NULL_ID = 0
OOV_ID = 1


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """`log1p` step: sign(x) * log(1 + |x|) (log1p itself for x >= 0, and defined for negatives)."""
    return np.copysign(np.log1p(np.abs(x)), x)


# -- dense ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseStats:
    """Fitted on train: the fill value (raw units) and mean/std/min/max of the filled column after
    the `log1p` step (what zscore / minmax use)."""

    fill: Optional[float]
    mean: float
    std: float
    min: float
    max: float


class DenseFitter:
    """Streaming count/mean/M2 (Chan et al.'s pairwise merge, numerically stable) and min/max."""

    def __init__(self, spec: DenseSpec) -> None:
        self.spec = spec
        self.raw_sum, self.nulls = 0.0, 0
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def update(self, raw: np.ndarray) -> None:
        """raw: float64 [rows] with NaN for nulls (train rows only)."""
        present = raw[~np.isnan(raw)]
        self.nulls += len(raw) - len(present)
        self.raw_sum += float(present.sum())
        if len(present):
            values = self._log(present)
            self._merge(len(values), float(values.mean()), float(((values - values.mean()) ** 2).sum()))
            self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))

    def _log(self, x: np.ndarray) -> np.ndarray:
        return signed_log1p(x) if "log1p" in self.spec.transform else x

    def _merge(self, n: int, mean: float, m2: float) -> None:
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def finish(self, name: str) -> DenseStats:
        present = self.n
        if self.spec.fill == "mean" and present == 0:
            raise ValueError(f"dense {name!r}: no values on train to compute the fill mean")
        fill = self.raw_sum / present if self.spec.fill == "mean" else (
            None if self.spec.fill == "error" else float(self.spec.fill))
        if fill is not None and self.nulls:  # the filled rows join the statistics
            f = float(self._log(np.array([fill]))[0])
            self._merge(self.nulls, f, 0.0)
            self.lo, self.hi = min(self.lo, f), max(self.hi, f)
        if self.n == 0:
            raise ValueError(f"dense {name!r}: no values on train")
        return DenseStats(fill=fill, mean=self.mean, std=math.sqrt(self.m2 / self.n), min=self.lo, max=self.hi)


def encode_dense(spec: DenseSpec, stats: DenseStats, raw: np.ndarray) -> np.ndarray:
    """raw float64 [rows] (NaN = null, already checked against fill: error) -> float32 [rows]."""
    x = np.where(np.isnan(raw), stats.fill if stats.fill is not None else np.nan, raw)
    if "log1p" in spec.transform:
        x = signed_log1p(x)
    if "zscore" in spec.transform:
        x = (x - stats.mean) / stats.std if stats.std > 0 else np.zeros_like(x)
    if "minmax" in spec.transform:  # other splits are clipped to the train range
        x = np.clip((x - stats.min) / (stats.max - stats.min), 0.0, 1.0) if stats.max > stats.min else np.zeros_like(x)
    return x.astype(np.float32)


# -- vocabularies -----------------------------------------------------------------------------------
class VocabCounter:
    """Counts of distinct text values over train; memory ~ distinct values (merged lazily)."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []
        self._merged = 0
        self._pending = 0

    def update(self, values: pa.Array, counts: np.ndarray) -> None:
        """Add `counts[i]` occurrences of the distinct non-null text `values[i]`."""
        seen = counts > 0
        part = pa.table({"value": values.cast(pa.large_string()).filter(pa.array(seen)),
                         "count": pa.array(counts[seen].astype(np.int64))})
        self._parts.append(part)
        self._pending += part.num_rows
        if self._pending > max(2 * self._merged, 1 << 16):  # amortised: each value merged O(log) times
            self._merge()

    def _merge(self) -> None:
        table = pa.concat_tables(self._parts).group_by("value").aggregate([("count", "sum")])
        self._parts = [table.rename_columns(["value", "count"])]
        self._merged, self._pending = table.num_rows, 0

    def finish(self, min_count: int) -> "Vocabulary":
        self._merge()
        table = self._parts[0]
        table = table.filter(pc.greater_equal(table["count"], min_count))
        return Vocabulary(table.sort_by("value"))


class Vocabulary:
    """Sorted train values (a `value`, `count` table); value at position i has id 2 + i."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.values = table["value"].combine_chunks().cast(pa.large_string())
        hashes = fnv1a64(self.values)
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, uniques: pa.Array) -> np.ndarray:
        """Ids of distinct values [n] -> int64 [n] (OOV_ID where not in the vocabulary)."""
        if not len(self):
            return np.full(len(uniques), OOV_ID, np.int64)
        h = fnv1a64(uniques)
        pos = np.minimum(np.searchsorted(self._hashes, h), len(self) - 1)
        candidate = self._order[pos]
        hit = self._hashes[pos] == h
        same = pc.equal(uniques.cast(pa.large_string()), self.values.take(pa.array(candidate)))
        hit &= same.to_numpy(zero_copy_only=False)  # the text decides; the hash only finds the candidate
        return np.where(hit, candidate + 2, OOV_ID).astype(np.int64)

    def save(self, path: Path) -> None:
        pq.write_table(self.table, path, compression="zstd")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls(pq.read_table(path))


# -- bucketize --------------------------------------------------------------------------------------
class QuantileSampler:
    """A uniform sample of at most `size` train values (the smallest random keys kept), for quantiles."""

    def __init__(self, size: int = 1 << 20, seed: int = 0) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0)
        self.values = np.zeros(0)

    def update(self, raw: np.ndarray) -> None:
        values = raw[~np.isnan(raw)]
        keys = np.concatenate([self.keys, self.rng.random(len(values))])
        values = np.concatenate([self.values, values])
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size)[:self.size]
            keys, values = keys[keep], values[keep]
        self.keys, self.values = keys, values

    def finish(self, buckets: int, name: str) -> tuple[float, ...]:
        if not len(self.values):
            raise ValueError(f"categorical {name!r}: no values on train to fit quantiles")
        qs = np.quantile(self.values, np.arange(1, buckets) / buckets)
        return tuple(float(b) for b in np.unique(qs))


# -- categorical encoding ---------------------------------------------------------------------------
class CategoricalEncoder:
    """Text values -> int64 ids of one feature (NULL_ID for nulls); counts out-of-vocabulary values."""

    def __init__(self, spec: CategoricalSpec, vocabulary: Optional[Vocabulary] = None,
                 boundaries: tuple[float, ...] = ()) -> None:
        self.spec = spec
        self.vocabulary = vocabulary
        self.boundaries = np.asarray(boundaries, np.float64)

    @property
    def num_embeddings(self) -> int:
        if self.spec.encoding == "vocab":
            return len(self.vocabulary) + 2
        if self.spec.encoding == "hash":
            return self.spec.buckets + 1
        return len(self.boundaries) + 2

    def encode_text(self, values: pa.Array) -> np.ndarray:
        """Ids of text `values` [n] (vocab / hash): each distinct value is looked up once."""
        encoded = values.dictionary_encode()
        uniques = encoded.dictionary
        if self.spec.encoding == "hash":
            ids = 1 + hash_ids_into_range(fnv1a64(uniques), self.spec.buckets)  # = string_hash mod buckets
        else:
            ids = self.vocabulary.lookup(uniques)
        index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return np.append(ids, NULL_ID)[index]  # index -1 (null) picks the appended NULL_ID

    def encode_numbers(self, raw: np.ndarray) -> np.ndarray:
        """Bucketize: 1 + number of boundaries <= value; NaN (null) -> NULL_ID."""
        ids = 1 + np.searchsorted(self.boundaries, raw, side="right")
        return np.where(np.isnan(raw), NULL_ID, ids).astype(np.int64)
