"""Prediction write-back: one Parquet file per rank with the row key and, per task, the label,
mask and served prediction — the format `mtrec metrics` reads (`<task>_label`, `<task>_pred`,
`<task>_mask`, `weight`). Padding rows (key -1) are dropped.

Every rank writes into OUT/predictions.tmp/; when all are done, rank 0 writes `_manifest.json`
(files, rows per file, checkpoint, step, world size, data) and swaps the directory in for
OUT/predictions whole, so files of an earlier run with another world size never remain beside the
new ones, and a crash leaves only the `.tmp` directory. `mtrec metrics --predictions DIR` reads
exactly the manifest's files (pipeline/data/units.py)."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.data.units import MANIFEST
from pipeline.runtime.atomic import swap_in
from pipeline.runtime.distributed import DistContext, barrier, gather_objects


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
def prediction_writer(out_dir: Path, ctx: DistContext, tasks: Sequence[str],
                      provenance: dict[str, Any]) -> Iterator[PredictionWriter]:
    """Collective: OUT/predictions/part-<rank>.parquet of every rank, with a manifest, swapped in
    as one directory once every rank has finished (nothing under the final name on a crash)."""
    final = Path(out_dir) / "predictions"
    tmp = final.with_name(f"{final.name}.tmp")
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt
        tmp.mkdir(parents=True)
    barrier()
    name = f"part-{ctx.rank:05d}.parquet"
    fields = [("row_id", pa.int64()), ("weight", pa.float32())]
    for task in tasks:
        fields += [(f"{task}_label", pa.float32()), (f"{task}_pred", pa.float32()), (f"{task}_mask", pa.float32())]
    with pq.ParquetWriter(tmp / name, pa.schema(fields), compression="zstd") as writer:
        rows = PredictionWriter(tasks, writer)
        yield rows
    files = gather_objects({"file": name, "rows": rows.rows}, ctx)
    if ctx.is_main:
        manifest = {**provenance, "world_size": ctx.world_size, "tasks": list(tasks), "files": files,
                    "rows": sum(f["rows"] for f in files)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        swap_in(tmp, final)
    barrier()
