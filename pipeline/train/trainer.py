"""`mtrec train`: the training job, top to bottom.

1. config + dataset schema  ->  2. process group, seed  ->  3. model (EBC on meta) with the fused
embedding optimiser  ->  4. sharding plan + DistributedModelParallel  ->  5. combined optimiser and
LR schedule  ->  6. resume from the latest complete checkpoint  ->  7. epochs of
TrainPipelineSparseDist segments, with validation, early stopping and checkpoints between them.

Every rank runs the same number of steps per epoch (MIN of the local batch counts): the sharded
embeddings' collectives would hang otherwise. The data stream is a deterministic function of
(seed, epoch, rank, world size, workers), so the data position in a checkpoint is (epoch, batches
consumed in that epoch) and resuming re-creates the stream and skips those batches.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from models.factory import build_model
from pipeline.config import JobConfig, dump_job_config, load_job_config
from pipeline.runtime.atomic import atomic_write_text
from pipeline.data.reader import ParquetBatchStream, make_loader
from pipeline.data.schema import DatasetSchema
from pipeline.train.validation import validate
from pipeline.runtime import checkpoint as ckpt
from pipeline.runtime.distributed import DistContext, all_reduce_int, init_distributed, seed_everything, shutdown_distributed
from pipeline.train.optimizer import LRSchedule, build_optimizer, fuse_sparse_optimizer, materialize_dense_state
from pipeline.train.run_log import RunLog
from pipeline.runtime.sharding import describe_plan, plan_sharding, wrap_model

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint's meta.json."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_score: Optional[float] = None
    best_step: Optional[int] = None
    bad_validations: int = 0
    stopped_early: bool = False
    finished: bool = False


def dataset_identity(schema: DatasetSchema) -> dict[str, Any]:
    """What must not change under a resumed run: the dataset's name and its split row counts."""
    return {"name": schema.name, "rows": {split: info.rows for split, info in sorted(schema.splits.items())}}


def train_main(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Entry point of `mtrec train`; returns the run summary on rank 0 (None elsewhere)."""
    overrides = list(args.overrides)
    for key, value in (("max_steps", args.max_steps), ("epochs", args.epochs), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = load_job_config(args.config, overrides)
    schema = DatasetSchema.load(args.data)
    ctx = init_distributed()
    try:
        trainer = Trainer(cfg, schema, Path(args.out), ctx)
        resume = not args.no_resume  # automatic when RUN has a checkpoint; --resume makes it explicit
        summary = trainer.fit(resume=resume, require_checkpoint=args.resume)
        return summary if ctx.is_main else None
    finally:
        shutdown_distributed()


class Trainer:
    def __init__(self, cfg: JobConfig, schema: DatasetSchema, run_dir: Path, ctx: DistContext) -> None:
        self.cfg, self.schema, self.run_dir, self.ctx = cfg, schema, run_dir, ctx
        self.inputs = schema.input_spec()
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_job_config(cfg))
            schema.save(run_dir)  # lets `mtrec evaluate` read logs that sit outside the dataset
        seed_everything(cfg.train.seed)
        model = build_model(cfg.model, self.inputs, ebc_device="meta")
        if model.sparse_arch is not None:
            fuse_sparse_optimizer(model.sparse_arch.ebc, cfg.train.sparse_optimizer)
        plan = plan_sharding(model, cfg.sharding, self.inputs, ctx, cfg.train.batch_size)
        self.plan_text = describe_plan(plan)
        if ctx.is_main:
            log.info("sharding plan (world size %d):\n%s", ctx.world_size, self.plan_text)
            atomic_write_text(run_dir / "plan.txt", self.plan_text + "\n")
        self.model = wrap_model(model, plan, ctx)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.steps_per_epoch = self._agreed_steps(self._train_stream(epoch=0))
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        self.schedule = LRSchedule(self.optimizer, cfg.train.lr_schedule, self.total_steps)
        self.run_log = RunLog(run_dir, enabled=ctx.is_main)

    # ----------------------------------------------------------------- data
    def _train_stream(self, epoch: int) -> ParquetBatchStream:
        c = self.cfg
        return ParquetBatchStream(
            self.schema, self.schema.split_paths("train"), c.train.batch_size,
            rank=self.ctx.rank, world_size=self.ctx.world_size, num_workers=c.data.num_workers,
            shuffle=True, seed=c.train.seed, epoch=epoch, shuffle_buffer_rows=c.data.shuffle_buffer_rows,
            read_ahead=c.data.read_ahead, with_keys=False,
        )

    def _agreed_steps(self, stream: ParquetBatchStream) -> int:
        return all_reduce_int(stream.num_batches(), dist.ReduceOp.MIN, self.ctx.device)

    # ----------------------------------------------------------------- loop
    def fit(self, resume: bool, require_checkpoint: bool) -> dict[str, Any]:
        progress = self._restore(resume, require_checkpoint)
        start_step = progress.step
        bar = tqdm(total=self.total_steps, initial=progress.step, disable=not self.ctx.is_main,
                   desc="train", unit="step", dynamic_ncols=True)
        validation: Optional[dict[str, Any]] = None
        while not self._done(progress):
            stream = self._train_stream(progress.epoch)
            epoch_steps = self._agreed_steps(stream)
            batches = iter(make_loader(stream, self.cfg.data.num_workers))
            for _ in range(progress.batch_in_epoch):  # resume mid-epoch: skip what was trained on
                next(batches)
            while progress.batch_in_epoch < epoch_steps and not self._done(progress):
                seg = self._segment_length(progress, epoch_steps)
                self._train_segment(itertools.islice(batches, seg), seg, progress, bar)
                epoch_end = progress.batch_in_epoch >= epoch_steps
                if self._validation_due(progress.step, epoch_end) or self._done(progress):
                    validation = self._validate_and_track(progress)
                if self._checkpoint_due(progress.step, epoch_end) and not self._done(progress):
                    self._save(progress, validation)  # the last one is saved below, marked finished
            if progress.batch_in_epoch >= epoch_steps:
                progress.epoch += 1
                progress.batch_in_epoch = 0
        bar.close()
        if validation is None:  # resumed a finished run, or zero steps: report the current model
            validation = self._validate_and_track(progress, track=False)
        progress.finished = True
        summary = {"steps": progress.step, "epochs_completed": progress.epoch,
                   "stopped_early": progress.stopped_early, "best_step": progress.best_step,
                   "world_size": self.ctx.world_size, "validation": validation}
        if progress.step > start_step or not ckpt.complete_checkpoints(self.run_dir):
            self._save(progress, validation)  # the final checkpoint, marked finished
        if self.ctx.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
        self.run_log.close()
        return summary

    def _done(self, p: Progress) -> bool:
        c = self.cfg.train
        return p.finished or p.stopped_early or p.epoch >= c.epochs or (c.max_steps is not None and p.step >= c.max_steps)

    def _segment_length(self, p: Progress, epoch_steps: int) -> int:
        """Steps until the next validation, checkpoint, end of epoch or step budget."""
        c = self.cfg.train
        limits = [epoch_steps - p.batch_in_epoch]
        for every in (c.validate_every_steps, c.checkpoint_every_steps):
            if every:
                limits.append(every - p.step % every)
        if c.max_steps is not None:
            limits.append(c.max_steps - p.step)
        return max(1, min(limits))

    def _validation_due(self, step: int, epoch_end: bool) -> bool:
        every = self.cfg.train.validate_every_steps
        return step % every == 0 if every else epoch_end

    def _checkpoint_due(self, step: int, epoch_end: bool) -> bool:
        every = self.cfg.train.checkpoint_every_steps
        return step % every == 0 if every else self._validation_due(step, epoch_end)

    def _train_segment(self, batches: Iterator, steps: int, p: Progress, bar: tqdm) -> None:
        """Run `steps` steps through a fresh TrainPipelineSparseDist (it prefetches, so each segment
        gets exactly its batches and the data position stays exact at segment ends)."""
        pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.ctx.device, execute_all_batches=True)
        rows_per_step = self.cfg.train.batch_size * self.ctx.world_size
        window_loss, window_steps, window_start = None, 0, time.perf_counter()
        for _ in range(steps):
            lr_factor = self.schedule.apply(p.step)
            outputs = pipeline.progress(batches)
            p.step += 1
            p.batch_in_epoch += 1
            task_loss = outputs["loss_per_task"].detach()
            window_loss = task_loss if window_loss is None else window_loss + task_loss
            window_steps += 1
            bar.update(1)
            if p.step % self.cfg.train.log_every_steps == 0 or window_steps == steps:
                elapsed = time.perf_counter() - window_start
                mean = (window_loss / window_steps).tolist()
                rate = rows_per_step * window_steps / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{sum(mean):.4f}", ex_s=f"{rate:,.0f}", epoch=p.epoch)
                self.run_log.write("train", p.step, {
                    "epoch": p.epoch, "loss": sum(mean), "lr_factor": lr_factor, "examples_per_s": rate,
                    "loss_per_task": dict(zip(self.inputs.task_names, mean)),
                })
                window_loss, window_steps, window_start = None, 0, time.perf_counter()
        pipeline.detach()

    def _validate_and_track(self, p: Progress, track: bool = True) -> dict[str, Any]:
        c = self.cfg
        result = validate(self.model, self.schema, "valid", self.ctx, batch_size=c.eval.batch_size,
                          auc_mode=c.eval.auc_mode, num_workers=c.data.num_workers,
                          max_batches=c.train.validation_max_batches)
        self.run_log.write("valid", p.step, {"tasks": result["tasks"]})
        es = c.train.early_stopping
        if track and es.task is not None:
            score = result["tasks"][es.task][es.metric]
            better = p.best_score is None or (score is not None and (
                score > p.best_score if es.metric == "auc" else score < p.best_score))
            if better:
                p.best_score, p.best_step, p.bad_validations = score, p.step, 0
            else:
                p.bad_validations += 1
                p.stopped_early = p.bad_validations >= es.patience
                if p.stopped_early:
                    log.info("early stopping at step %d: %s %s has not improved for %d validations "
                             "(best %.6f at step %d)", p.step, es.task, es.metric, es.patience,
                             p.best_score, p.best_step)
        return result

    # ----------------------------------------------------------------- checkpoints
    def _save(self, p: Progress, validation: Optional[dict[str, Any]]) -> None:
        meta = {"progress": vars(p).copy(), "validation": validation,
                "dataset": dataset_identity(self.schema)}
        ckpt.save_checkpoint(self.run_dir, p.step, self.model, self.optimizer, meta, self.plan_text,
                             self.ctx, self.cfg.train.keep_last_checkpoints)

    def _restore(self, resume: bool, require_checkpoint: bool) -> Progress:
        found = ckpt.complete_checkpoints(self.run_dir) if resume else []
        if not found:
            if require_checkpoint:
                raise ckpt.CheckpointError(f"--resume: no complete checkpoint under {self.run_dir}/checkpoints")
            return Progress()
        materialize_dense_state(self.optimizer)  # params are overwritten by the load right after
        meta = ckpt.load_checkpoint(found[-1], self.model, self.optimizer, self.ctx, self.plan_text)
        if meta.get("dataset") != dataset_identity(self.schema):
            raise ckpt.CheckpointError(f"{found[-1]}: written for a different dataset than {self.schema.root}")
        progress = Progress(**meta["progress"])
        # a finished run resumed with a larger budget (more epochs / steps) continues training
        progress = replace(progress, finished=False)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", found[-1], progress.step,
                 progress.epoch, progress.batch_in_epoch)
        self.run_log.write("resume", progress.step, {"checkpoint": str(found[-1])})
        return progress
