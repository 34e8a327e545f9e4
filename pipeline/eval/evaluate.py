"""`mtrec evaluate`: stream a Parquet log through a trained (sharded) model and report per-task
metrics, under any world size the planner can serve.

The checkpoint's model is re-sharded by DCP onto this job's plan, so a model trained on 2 ranks
evaluates on 1 or 4. Metric states are sums merged by all-reduce: the report is identical for any
world size and file order (docs/METRICS.md). Rank 0 writes the report; with --write-predictions
each rank writes its own file into a new predictions directory that replaces OUT/predictions
whole, with a manifest (pipeline/eval/predictions.py). Without --config, the config stored with
the checkpoint is used; a --config whose model differs from it is refused.
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
from models.typed_config import ConfigError, to_dict
from pipeline.config import JobConfig, differing_keys, load_job_config, value_at
from pipeline.data.schema import SCHEMA_FILE, DatasetSchema
from pipeline.data.units import expand_parquet
from pipeline.runtime.inference import eval_batches, run_inference
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.eval.predictions import prediction_writer
from pipeline.eval.report import write_report
from pipeline.runtime.checkpoint import (BEST, CONFIG_FILE, CheckpointError, load_checkpoint, resolve_checkpoint,
                                         run_dir_of)
from pipeline.runtime.distributed import DistContext, init_distributed, shutdown_distributed
from pipeline.runtime.sharding import plan_sharding, wrap_model

log = logging.getLogger(__name__)


def schema_for(data_paths: list[str], checkpoint: Path, different_encoding: bool = False) -> DatasetSchema:
    """The dataset's schema.yaml when the files sit in a prepared dataset's split directory (refused
    when it is encoded differently from the training data, unless `different_encoding`), else the
    one stored with the checkpoint (the training dataset's contract)."""
    dataset_dir = Path(data_paths[0]).parent.parent
    stored = checkpoint if (checkpoint / SCHEMA_FILE).is_file() else run_dir_of(checkpoint)
    if not (dataset_dir / SCHEMA_FILE).is_file():
        return DatasetSchema.load(stored)
    schema = DatasetSchema.load(dataset_dir)
    if (stored / SCHEMA_FILE).is_file():
        schema.check_encoded_like(DatasetSchema.load(stored), different_encoding)
    return schema


# Model keys that choose how trained weights are served, not what was trained: they may differ from
# the checkpoint's (e.g. score a mutual-learning model's local towers instead of its global heads).
SERVING_KEYS = ("model.dml.gkd.serve_head",)


def checkpoint_config(checkpoint: Path, config: Optional[str], overrides: list[str]) -> JobConfig:
    """The job config a checkpoint was trained with (stored with it, else the run's config.yaml), with
    `overrides`. A `config` given by the user may change everything but the model (SERVING_KEYS
    aside): a model that differs is refused, naming the differing keys."""
    stored_path = checkpoint / CONFIG_FILE
    if not stored_path.is_file():
        stored_path = run_dir_of(checkpoint) / CONFIG_FILE
    if not stored_path.is_file():
        if config is None:
            raise CheckpointError(f"{checkpoint}: no {CONFIG_FILE} stored with it or its run; pass --config")
        return load_job_config(config, overrides)
    stored = load_job_config(stored_path)
    given = load_job_config(config if config is not None else stored_path, overrides)
    differing = differing_keys(to_dict(stored.model), to_dict(given.model), "model")
    for key in set(differing) & set(SERVING_KEYS):
        log.info("%s: %s (the checkpoint was trained serving %s)", key, value_at(to_dict(given), key),
                 value_at(to_dict(stored), key))
    differing = [key for key in differing if key not in SERVING_KEYS]
    if differing:
        source = f"--config {config}" if config is not None else "the overrides"
        raise ConfigError(f"{source}: the model differs from the checkpoint's ({stored_path}) at "
                          f"{', '.join(differing[:8])}{' ...' if len(differing) > 8 else ''}; omit --config and "
                          "model.* overrides to use the checkpoint's")
    return given


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

    def provenance(self) -> dict[str, Any]:
        """What a report says about the model it scored: checkpoint, step, its validation metric."""
        return {"checkpoint": str(self.checkpoint), "step": self.meta["step"],
                "best": self.checkpoint.name == BEST, "trained_world_size": self.meta["world_size"],
                "validation_metric": self.meta.get("watched")}


@contextlib.contextmanager
def inference_job(args: argparse.Namespace) -> Iterator[InferenceJob]:
    """Config, data and process group, then the checkpoint's model sharded by the planner for this
    job's world size and plan (DCP re-shards it); the process group is shut down on exit.
    `args`: checkpoint, which, config (optional), overrides, data."""
    ckpt = resolve_checkpoint(args.checkpoint, args.which)
    cfg = checkpoint_config(ckpt, args.config, args.overrides)
    if (Path(args.data) / SCHEMA_FILE).is_file():  # every split below it would be scored as one log
        raise ValueError(f"--data {args.data} is a whole dataset (it has {SCHEMA_FILE}): pass the split to score, "
                         f"e.g. --data {Path(args.data) / 'test'}")
    paths = expand_parquet(args.data, "--data")
    schema = schema_for(paths, ckpt, args.different_encoding)
    inputs = schema.input_spec()
    ctx = init_distributed()
    try:
        model = build_model(cfg.model, inputs, ebc_device="meta")
        dmp = wrap_model(model, plan_sharding(model, cfg.sharding, inputs, ctx, cfg.eval.batch_size), ctx)
        meta = load_checkpoint(ckpt, dmp, None, ctx)
        log.debug("scoring %s checkpoint %s (step %d, trained on %d rank(s)) on %d rank(s)",
                  "the best" if ckpt.name == BEST else "the", ckpt, meta["step"], meta["world_size"], ctx.world_size)
        yield InferenceJob(cfg, ckpt, meta, paths, schema, ctx, dmp)
    finally:
        shutdown_distributed()


def evaluate_main(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Entry point of `mtrec evaluate`; returns the report on rank 0 (None elsewhere)."""
    with inference_job(args) as job:
        cfg, schema, ctx, inputs = job.cfg, job.schema, job.ctx, job.inputs
        batches, _ = eval_batches(schema, job.paths, ctx, batch_size=cfg.eval.batch_size,
                                  num_workers=cfg.data.num_workers, with_keys=True)
        train_rates = schema.splits["train"].positive_rates if "train" in schema.splits else {}
        metrics = MultiTaskMetrics(inputs.tasks, auc_mode=args.auc_mode, baseline_rates=train_rates)
        out = Path(args.out)
        with (prediction_writer(out, ctx, inputs.task_names, job.provenance() | {"data": args.data})
              if args.write_predictions else contextlib.nullcontext()) as writer:
            def consume(outputs: dict) -> None:
                metrics.update(outputs["predictions"], outputs["labels"], outputs["masks"], outputs["weights"])
                if writer is not None:
                    writer.write(outputs)

            run_inference(job.model, batches, ctx, consume)
        metrics.all_reduce_()
        report = {**metrics.compute(), **job.provenance(), "data": args.data, "files": len(job.paths),
                  "world_size": ctx.world_size}
        if ctx.is_main:
            write_report(out, report, metrics.histograms(), metrics.mantissa_bits)
            log.debug("report written to %s", out)
        return report if ctx.is_main else None
