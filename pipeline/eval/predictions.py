"""Prediction write-back: one Parquet file per rank with the row key and, per task, the label,
mask and served prediction — the format `mtrec metrics` reads (`<task>_label`, `<task>_pred`,
`<task>_mask`, `weight`). Padding rows (key -1) are dropped. The file is written under a
temporary name and renamed when complete."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.runtime.atomic import atomic_path


class PredictionWriter:
    def __init__(self, tasks: Sequence[str], writer: pq.ParquetWriter) -> None:
        self._tasks = list(tasks)
        self._writer = writer
        self.rows = 0

    def write(self, outputs: dict[str, torch.Tensor]) -> None:
        """outputs: the model's outputs for one batch (keys [B], predictions/labels/masks [B, T], weights [B])."""
        keep = outputs["keys"] >= 0
        columns = {"row_id": outputs["keys"][keep].numpy(), "weight": outputs["weights"][keep].numpy()}
        for t, name in enumerate(self._tasks):
            columns[f"{name}_label"] = outputs["labels"][keep, t].numpy()
            columns[f"{name}_pred"] = outputs["predictions"][keep, t].float().numpy()
            columns[f"{name}_mask"] = outputs["masks"][keep, t].numpy()
        self._writer.write_table(pa.table(columns))
        self.rows += int(keep.sum())


@contextlib.contextmanager
def prediction_writer(out_dir: Path, rank: int, tasks: Sequence[str]) -> Iterator[PredictionWriter]:
    """OUT/predictions/part-<rank>.parquet, atomically (nothing under the final name on a crash)."""
    final = Path(out_dir) / "predictions" / f"part-{rank:05d}.parquet"
    fields = [("row_id", pa.int64()), ("weight", pa.float32())]
    for name in tasks:
        fields += [(f"{name}_label", pa.float32()), (f"{name}_pred", pa.float32()), (f"{name}_mask", pa.float32())]
    with atomic_path(final) as tmp:
        with pq.ParquetWriter(tmp, pa.schema(fields), compression="zstd") as writer:
            yield PredictionWriter(tasks, writer)
