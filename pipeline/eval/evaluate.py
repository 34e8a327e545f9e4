"""`mtrec evaluate`: stream a Parquet log through a trained (sharded) model and report per-task
metrics, under any world size the planner can serve.

The checkpoint's model is re-sharded by DCP onto this job's plan, so a model trained on 2 ranks
evaluates on 1 or 4. Metric states are sums merged by all-reduce: the report is identical for any
world size and file order (docs/METRICS.md). Rank 0 writes the report; each rank writes its own
predictions file when asked.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from torchrec.distributed import DistributedModelParallel

from models.factory import build_model
from models.inputs import InputSpec
from pipeline.config import JobConfig, load_job_config
from pipeline.data.schema import DatasetSchema
from pipeline.data.units import expand_parquet
from pipeline.runtime.inference import eval_batches, run_inference
from pipeline.metrics.metric_state import MultiTaskMetrics
from pipeline.eval.predictions import prediction_writer
from pipeline.eval.report import write_report
from pipeline.runtime.checkpoint import load_checkpoint, resolve_checkpoint
from pipeline.runtime.distributed import DistContext, init_distributed, shutdown_distributed
from pipeline.runtime.sharding import plan_sharding, wrap_model

log = logging.getLogger(__name__)


def schema_for(data_paths: list[str], run_dir: Path) -> DatasetSchema:
    """The dataset's schema.yaml when the files sit in a prepared dataset's split directory,
    else the copy the trainer saved into the run directory."""
    dataset_dir = Path(data_paths[0]).parent.parent
    if (dataset_dir / "schema.yaml").is_file():
        return DatasetSchema.load(dataset_dir)
    return DatasetSchema.load(run_dir)


@dataclass(frozen=True)
class InferenceJob:
    """A trained model loaded for inference over some Parquet files, on this rank."""

    cfg: JobConfig
    checkpoint: Path
    meta: dict[str, Any]  # the checkpoint's meta.json
    paths: list[str]
    schema: DatasetSchema
    ctx: DistContext
    model: DistributedModelParallel

    @property
    def inputs(self) -> InputSpec:
        return self.schema.input_spec()


@contextlib.contextmanager
def inference_job(config: str, overrides: list[str], checkpoint: str, data: str) -> Iterator[InferenceJob]:
    """Config, data and process group, then the checkpoint's model sharded by the planner for this
    job's world size (DCP re-shards it); the process group is shut down on exit."""
    cfg = load_job_config(config, overrides)
    ckpt = resolve_checkpoint(checkpoint)
    paths = expand_parquet(data, "--data")
    schema = schema_for(paths, ckpt.parents[1])
    inputs = schema.input_spec()
    ctx = init_distributed()
    try:
        model = build_model(cfg.model, inputs, ebc_device="meta")
        dmp = wrap_model(model, plan_sharding(model, cfg.sharding, inputs, ctx, cfg.eval.batch_size), ctx)
        meta = load_checkpoint(ckpt, dmp, None, ctx)
        yield InferenceJob(cfg, ckpt, meta, paths, schema, ctx, dmp)
    finally:
        shutdown_distributed()


def evaluate_main(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Entry point of `mtrec evaluate`; returns the report on rank 0 (None elsewhere)."""
    with inference_job(args.config, args.overrides, args.checkpoint, args.data) as job:
        cfg, schema, ctx, inputs = job.cfg, job.schema, job.ctx, job.inputs
        batches, _ = eval_batches(schema, job.paths, ctx, batch_size=cfg.eval.batch_size,
                                  num_workers=cfg.data.num_workers, with_keys=True)
        train_rates = schema.splits["train"].positive_rates if "train" in schema.splits else {}
        metrics = MultiTaskMetrics(inputs.tasks, auc_mode=args.auc_mode, baseline_rates=train_rates)
        out = Path(args.out)
        with (prediction_writer(out, ctx.rank, inputs.task_names) if args.write_predictions
              else contextlib.nullcontext()) as writer:
            def consume(outputs: dict) -> None:
                metrics.update(outputs["predictions"], outputs["labels"], outputs["masks"], outputs["weights"])
                if writer is not None:
                    writer.write(outputs)

            run_inference(job.model, batches, ctx, consume)
        metrics.all_reduce_()
        report = {**metrics.compute(), "checkpoint": str(job.checkpoint), "step": job.meta["step"],
                  "data": args.data, "files": len(job.paths), "world_size": ctx.world_size}
        if ctx.is_main:
            write_report(out, report, metrics.histograms(), metrics.mantissa_bits)
            log.info("report written to %s", out)
        return report if ctx.is_main else None
