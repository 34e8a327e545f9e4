"""Metrics of a DMP-wrapped model over one split of a prepared dataset: used for validation during
training (and early stopping) and by `mtrec evaluate` on a dataset split."""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from pipeline.data.schema import DatasetSchema
from pipeline.runtime.inference import eval_batches, run_inference
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.runtime.distributed import DistContext


def validate(model: torch.nn.Module, schema: DatasetSchema, split: str, ctx: DistContext, *, batch_size: int,
             auc_mode: Literal["bounded", "exact"], num_workers: int,
             max_batches: Optional[int] = None) -> dict[str, Any]:
    """Every row of `split` exactly once across ranks (no shuffle), metrics all-reduced: the
    result is identical on every rank and for any world size."""
    batches, _ = eval_batches(schema, schema.split_paths(split), ctx, batch_size=batch_size,
                              num_workers=num_workers, with_keys=False, max_steps=max_batches)
    metrics = MultiTaskMetrics(schema.input_spec().tasks, auc_mode=auc_mode)
    run_inference(model, batches, ctx, lambda out: metrics.update(
        out["predictions"], out["labels"], out["masks"], out["weights"]))
    metrics.all_reduce_()
    return metrics.compute()
