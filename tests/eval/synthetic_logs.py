"""Small synthetic prediction logs shared by the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def ctr_like(rng: np.random.Generator, rows: int, base_logit: float = -3.5) -> tuple[np.ndarray, np.ndarray]:
    """(pred, label) [rows]: sigmoid of normal logits (base rate ~3%), labels drawn from the preds."""
    pred = 1.0 / (1.0 + np.exp(-rng.normal(base_logit, 1.0, rows)))
    return pred, (rng.random(rows) < pred).astype(np.float64)


def write_log(path: Path, rng: np.random.Generator, rows: int, tasks: tuple[str, ...] = ("a", "b"), *,
              masks: bool = True, weights: bool = True, row_group_rows: int = 1000,
              file_index: int = 0) -> dict[str, np.ndarray]:
    """Write one prediction log (float32 preds, int8 labels, optional masks/weights, country, and a
    user column grouped by user, users disjoint across file_index); returns its columns as numpy."""
    columns: dict[str, np.ndarray] = {}
    for t in tasks:
        pred, label = ctr_like(rng, rows, base_logit=-1.5)
        columns[f"{t}_pred"] = pred.astype(np.float32)
        columns[f"{t}_label"] = label.astype(np.int8)
        if masks:
            columns[f"{t}_mask"] = (rng.random(rows) < 0.8).astype(np.float32)
    if weights:
        columns["weight"] = rng.integers(0, 4, rows).astype(np.float32)
    columns["country"] = rng.choice(np.array(["de", "fr", "us"]), rows)
    columns["user"] = np.sort(rng.integers(0, max(1, rows // 20), rows)) + 1_000_000 * file_index
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_rows)
    return columns
