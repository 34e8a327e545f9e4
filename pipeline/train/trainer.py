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
import functools
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from models.batch import MultiTaskBatch
from models.factory import build_model
from models.inputs import InputSpec
from models.multitask_model import MultiTaskModel
from models.typed_config import ConfigError
from pipeline.config import JobConfig, check_resumed_config, dump_job_config, resumable_change, train_job_config
from pipeline.runtime.atomic import atomic_write_text
from pipeline.data.reader import ParquetBatchStream, make_loader
from pipeline.train.data_position import StreamSettings, consumed_keys, train_stream
from pipeline.data.schema import SCHEMA_FILE, DatasetSchema
from pipeline.train.validation import validate
from pipeline.runtime import checkpoint as ckpt
from pipeline.runtime.distributed import DistContext, all_reduce_int, init_distributed, seed_everything, shutdown_distributed
from pipeline.train.optimizer import LRSchedule, build_optimizer, fuse_sparse_optimizer, materialize_dense_state
from pipeline.train.run_log import ProgressBar, RunLog
from pipeline.runtime.sharding import describe_plan, plan_file_text, plan_summary, plan_with_budget, wrap_model

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
    stream: Optional[dict[str, int]] = None  # StreamSettings of the batches counted by batch_in_epoch
    segments: list[dict[str, int]] = field(default_factory=list)  # closed parts of this epoch (data_position.py)


def dataset_identity(schema: DatasetSchema) -> dict[str, Any]:
    """What must not change under a resumed run: the dataset's name, its split row counts and, when
    it has one, its encoding digest (the same rows prepared with other options mean other things)."""
    identity = {"name": schema.name, "rows": {split: info.rows for split, info in sorted(schema.splits.items())}}
    return {**identity, "encoding": schema.encoding} if schema.encoding is not None else identity


def same_dataset(saved: Optional[dict[str, Any]], current: dict[str, Any]) -> bool:
    """`saved` (a checkpoint's dataset_identity) names the dataset `current` describes; an identity
    written before the encoding digest existed, or of a dataset without one, compares without it."""
    if saved is None:
        return False
    if "encoding" not in saved or "encoding" not in current:
        saved, current = ({k: v for k, v in d.items() if k != "encoding"} for d in (saved, current))
    return saved == current


def train_main(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Entry point of `mtrec train`; returns the run summary on rank 0 (None elsewhere)."""
    cfg = _job_config(args)
    schema = DatasetSchema.load(args.data)
    if not args.no_resume:
        check_resumable(cfg, schema, Path(args.out), args.accept_config_changes)
    ctx = init_distributed()
    try:
        trainer = Trainer(cfg, schema, Path(args.out), ctx)
        resume = not args.no_resume  # automatic when RUN has a checkpoint; --resume makes it explicit
        try:
            summary = trainer.fit(resume=resume, require_checkpoint=args.resume,
                                  init_from=getattr(args, "init_from", None))
        except KeyboardInterrupt:  # Ctrl-C: say where the run stands (the CLI prints it, exit 130)
            raise KeyboardInterrupt(trainer.interrupted_message()) from None
        return summary if ctx.is_main else None
    finally:
        shutdown_distributed()


def check_resumable(cfg: JobConfig, schema: DatasetSchema, run_dir: Path, accept_changes: bool) -> None:
    """A run directory with checkpoints is resumed on the dataset it was trained on (same_dataset),
    under the config it was trained with up to the keys a resumed run may change (pipeline/config.py
    RESUMABLE_CHANGES; `accept_changes` lets the others through with a warning). Checked before
    anything is built or RUN/config.yaml and RUN/schema.yaml are rewritten."""
    found = ckpt.complete_checkpoints(run_dir)
    if not found:
        return
    if not same_dataset(ckpt.read_meta(found[-1]).get("dataset"), dataset_identity(schema)):
        raise ckpt.CheckpointError(f"{found[-1]}: written for a different dataset than {schema.root} (another name, "
                                   "other split sizes or another encoding); --no-resume starts over")
    saved = found[-1] / ckpt.CONFIG_FILE
    if not saved.is_file():
        return
    changes = check_resumed_config(saved.read_text(encoding="utf-8"), str(saved), cfg, accept_changes)
    if changes and os.environ.get("RANK", "0") == "0":  # a warning only for what --accept-config-changes let through
        accepted = any(not resumable_change(line.partition(":")[0]) for line in changes)
        log.log(logging.WARNING if accepted else logging.INFO, "resuming %s under a changed config: %s",
                run_dir, "; ".join(changes))


def _job_config(args: argparse.Namespace) -> JobConfig:
    return train_job_config(args.config, args.overrides, max_steps=args.max_steps, epochs=args.epochs, seed=args.seed)


def dry_run_main(args: argparse.Namespace) -> Optional[str]:
    """Entry point of `mtrec train --dry-run`: the plan.txt text (see `dry_run`); under torchrun
    every rank plans (no collectives) and rank 0 returns the text (None elsewhere)."""
    text = dry_run(_job_config(args), DatasetSchema.load(args.data), args.world_size, args.local_world_size,
                   args.device)
    return text if os.environ.get("RANK", "0") == "0" else None


def build_training_model(cfg: JobConfig, inputs: InputSpec) -> MultiTaskModel:
    """The model with its EBC on meta and the fused embedding optimiser attached (nothing allocated)."""
    model = build_model(cfg.model, inputs, ebc_device="meta")
    if model.sparse_arch is not None:
        fuse_sparse_optimizer(model.sparse_arch.ebc, cfg.train.sparse_optimizer)
    return model


def dry_run(cfg: JobConfig, schema: DatasetSchema, world_size: Optional[int] = None,
            local_world_size: Optional[int] = None, device_type: Optional[str] = None) -> str:
    """`mtrec train --dry-run`: the sharding plan and per-rank memory estimate for `world_size`
    ranks (default: torchrun's WORLD_SIZE, else 1), `local_world_size` per host (default: torchrun's
    LOCAL_WORLD_SIZE, else all) on `device_type` (default: cuda when this machine has a GPU),
    planned in this process without a process group and without allocating a table. Planning for
    GPUs on a machine without one needs `sharding.per_rank_memory_gb`. Returns the run's plan.txt."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    local = min(world, local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    device = torch.device(device_type or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available() and cfg.sharding.per_rank_memory_gb is None:
        raise ConfigError("train --dry-run --device cuda on a machine without a GPU: set sharding.per_rank_memory_gb "
                          "(the GPUs' memory cannot be detected here)")
    ctx = DistContext(rank=0, world_size=world, local_rank=0, local_world_size=local, device=device, backend="none")
    inputs = schema.input_spec()
    plan, budget = plan_with_budget(build_training_model(cfg, inputs), cfg.sharding, inputs, ctx,
                                    cfg.train.batch_size, cfg.train)
    return plan_file_text(plan, budget, cfg.sharding)


def autocast_forward(model: torch.nn.Module, batch: MultiTaskBatch, device_type: str,
                     precision: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's forward under bf16 autocast when `precision` is bf16 (parameters stay fp32, the
    backward and the optimiser steps run outside it); loss and outputs come back as fp32."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, outputs = model(batch)
    return loss.float(), {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}


class Trainer:
    def __init__(self, cfg: JobConfig, schema: DatasetSchema, run_dir: Path, ctx: DistContext) -> None:
        self.cfg, self.schema, self.run_dir, self.ctx = cfg, schema, run_dir, ctx
        self.inputs = schema.input_spec()
        check_task_names(cfg, schema)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_job_config(cfg))
            schema.save(run_dir)  # lets `mtrec evaluate` read logs that sit outside the dataset
        seed_everything(cfg.train.seed)
        model = build_training_model(cfg, self.inputs)
        plan, budget = plan_with_budget(model, cfg.sharding, self.inputs, ctx, cfg.train.batch_size, cfg.train)
        self.plan_text = describe_plan(plan)
        if ctx.is_main:
            # the table-by-table plan is in RUN/plan.txt and RUN/train.log; the console gets one line
            log.debug("sharding plan (world size %d):\n%s", ctx.world_size, self.plan_text)
            log.info("%s", plan_summary(plan, budget, cfg.sharding))
            atomic_write_text(run_dir / "plan.txt", plan_file_text(plan, budget, cfg.sharding))
        self.model = wrap_model(model, plan, ctx)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.stream_settings = StreamSettings(ctx.world_size, cfg.data.num_workers, cfg.train.batch_size,
                                              cfg.data.shuffle_buffer_rows)
        self.steps_per_epoch = self._agreed_steps(self._train_stream(epoch=0))
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        self.progress: Optional[Progress] = None  # set by fit()
        self.run_log = RunLog(run_dir, enabled=ctx.is_main)

    # ----------------------------------------------------------------- data
    def _train_stream(self, epoch: int, segments: Optional[list[dict[str, int]]] = None) -> ParquetBatchStream:
        """This rank's stream of `epoch`, without the rows of the epoch's closed `segments`."""
        c = self.cfg
        exclude = consumed_keys(self.schema, segments or [], seed=c.train.seed, epoch=epoch,
                                read_ahead=c.data.read_ahead)
        return train_stream(self.schema, self.stream_settings, self.ctx.rank, seed=c.train.seed, epoch=epoch,
                            read_ahead=c.data.read_ahead, exclude_keys=exclude)

    def _agreed_steps(self, stream: ParquetBatchStream) -> int:
        return all_reduce_int(stream.num_batches(), dist.ReduceOp.MIN, self.ctx.device)

    # ----------------------------------------------------------------- loop
    def fit(self, resume: bool, require_checkpoint: bool, init_from: Optional[str] = None) -> dict[str, Any]:
        self.progress = progress = self._restore(resume, require_checkpoint, init_from)
        start_step = progress.step
        # positioned by the step alone: a resumed run continues the schedule exactly
        self.schedule = LRSchedule(self.optimizer, self.cfg.train.lr_schedule, self.total_steps, step=progress.step)
        bar = ProgressBar(self.total_steps, initial=progress.step, enabled=self.ctx.is_main)
        validation: Optional[dict[str, Any]] = None
        while not self._done(progress):
            stream = self._train_stream(progress.epoch, progress.segments)
            progress.stream = self.stream_settings.to_dict()
            epoch_steps = self._agreed_steps(stream)
            bar.set_total(self._expected_steps(progress, epoch_steps))
            batches = iter(make_loader(stream, self.cfg.data.num_workers))
            for _ in range(progress.batch_in_epoch):  # resume mid-epoch: skip what was trained on
                next(batches)
            while progress.batch_in_epoch < epoch_steps and not self._done(progress):
                seg = self._segment_length(progress, epoch_steps)
                self._train_segment(itertools.islice(batches, seg), seg, progress, bar)
                epoch_end = progress.batch_in_epoch >= epoch_steps
                improved = False
                if self._validation_due(progress.step, epoch_end) or self._done(progress):
                    last = self._done(progress) or (epoch_end and progress.epoch + 1 >= self.cfg.train.epochs)
                    validation = self._validate_and_track(progress, may_stop=not last)
                    improved = progress.best_step == progress.step
                if epoch_end:
                    progress.epoch, progress.batch_in_epoch, progress.segments = progress.epoch + 1, 0, []
                if (self._checkpoint_due(progress.step, epoch_end) or improved) and not self._done(progress):
                    self._save(progress, validation)  # the last one is saved below, marked finished
                if epoch_end:
                    break  # batch_in_epoch is 0 again: the next epoch needs its own stream
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

    def _expected_steps(self, p: Progress, epoch_steps: int) -> int:
        """The run's length as known when an epoch starts: the steps so far, the rest of this epoch,
        and epoch 0's count for each later epoch (epochs differ by a few steps: each rank's share of
        the row groups is drawn anew)."""
        c = self.cfg.train
        total = p.step + epoch_steps - p.batch_in_epoch + (c.epochs - p.epoch - 1) * self.steps_per_epoch
        return min(total, c.max_steps) if c.max_steps else total

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

    def _train_segment(self, batches: Iterator, steps: int, p: Progress, bar: ProgressBar) -> None:
        """Run `steps` steps through a fresh TrainPipelineSparseDist (it prefetches, so each segment
        gets exactly its batches and the data position stays exact at segment ends)."""
        pipeline = TrainPipelineSparseDist(
            self.model, self.optimizer, self.ctx.device, execute_all_batches=True,
            custom_model_fwd=functools.partial(autocast_forward, self.model, device_type=self.ctx.device.type,
                                               precision=self.cfg.train.precision))
        rows_per_step = self.cfg.train.batch_size * self.ctx.world_size
        window_loss, window_steps, window_start = None, 0, time.perf_counter()
        for _ in range(steps):
            lr_factor = self.schedule.factor
            outputs = pipeline.progress(batches)
            self.schedule.step()
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

    def _validate_and_track(self, p: Progress, track: bool = True, may_stop: bool = True) -> dict[str, Any]:
        """Validate; with `track`, follow the watched metric and (`may_stop`: training would go on
        otherwise) stop early after `patience` validations without improvement."""
        c = self.cfg
        result = validate(self.model, self.schema, "valid", self.ctx, batch_size=c.eval.batch_size,
                          auc_mode=c.eval.auc_mode, num_workers=c.data.num_workers,
                          max_batches=c.train.validation_max_batches)
        self.run_log.write("valid", p.step, {"tasks": result["tasks"]})
        es, watched = c.train.early_stopping, c.train.watched
        if track and watched.task is not None:
            score = watched.score(result["tasks"])
            if watched.better(score, p.best_score):
                p.best_score, p.best_step, p.bad_validations = score, p.step, 0
            elif es.task is not None:
                p.bad_validations += 1
                p.stopped_early = may_stop and p.bad_validations >= es.patience
                if p.stopped_early:
                    log.info("early stopping at step %d: %s %s has not improved for %d validations "
                             "(best %.6f at step %d)", p.step, es.task, es.metric, es.patience,
                             p.best_score, p.best_step)
        return result

    def interrupted_message(self) -> str:
        """What Ctrl-C leaves: the step reached and the checkpoint a rerun of the command resumes from."""
        step = self.progress.step if self.progress is not None else 0
        found = ckpt.complete_checkpoints(self.run_dir)
        if not found:
            return f"interrupted at step {step}; no complete checkpoint yet; rerun the same command to start again"
        last = ckpt.read_meta(found[-1])["step"]
        return (f"interrupted at step {step}; the last complete checkpoint is step {last}; "
                "rerun the same command to resume")

    # ----------------------------------------------------------------- checkpoints
    def _save(self, p: Progress, validation: Optional[dict[str, Any]]) -> None:
        watched = self.cfg.train.watched
        meta = {"progress": vars(p).copy(), "validation": validation, "dataset": dataset_identity(self.schema),
                "watched": {"task": watched.task, "metric": watched.metric,
                            "value": watched.score(validation["tasks"]) if validation and watched.task else None}}
        run_files = {ckpt.CONFIG_FILE: dump_job_config(self.cfg), SCHEMA_FILE: self.schema.to_yaml()}
        ckpt.save_checkpoint(self.run_dir, p.step, self.model, self.optimizer, meta, self.plan_text, run_files,
                             self.ctx, self.cfg.train.keep_last_checkpoints,
                             best=p.best_step == p.step and watched.task is not None)

    def _restore(self, resume: bool, require_checkpoint: bool, init_from: Optional[str]) -> Progress:
        found = ckpt.complete_checkpoints(self.run_dir) if resume else []
        if not found:
            if require_checkpoint:
                raise ckpt.CheckpointError(f"--resume: no complete checkpoint under {self.run_dir}/checkpoints")
            if init_from is not None:  # fine-tune: the weights only, any world size and plan
                source = ckpt.resolve_checkpoint(init_from)
                if self.ctx.is_main and (source / SCHEMA_FILE).is_file():
                    self.schema.check_encoded_like(DatasetSchema.load(source), accept=True,
                                                   anyway="fine-tuning from it anyway: its weights start from "
                                                          "another encoding's ids and scales")
                meta = ckpt.load_checkpoint(source, self.model, None, self.ctx)
                self.run_log.write("init_from", 0, {"checkpoint": str(source), "step": meta["step"]})
            return Progress()
        materialize_dense_state(self.optimizer)  # params are overwritten by the load right after
        meta = ckpt.load_checkpoint(found[-1], self.model, self.optimizer, self.ctx, self.plan_text)
        # a finished run resumed with a larger budget (more epochs / steps) continues training
        progress = replace(Progress(**meta["progress"]), finished=False)
        saved_stream = progress.stream or StreamSettings(meta["world_size"], self.cfg.data.num_workers,
                                                         self.cfg.train.batch_size,
                                                         self.cfg.data.shuffle_buffer_rows).to_dict()
        if progress.batch_in_epoch and saved_stream != self.stream_settings.to_dict():
            # elastic: close the epoch so far as a segment; the rest is re-partitioned (data_position.py)
            progress.segments = [*progress.segments, {**saved_stream, "batches": progress.batch_in_epoch}]
            progress.batch_in_epoch = 0
            log.info("resuming epoch %d under other stream settings (%s, was %s): its remaining rows are "
                     "re-partitioned over this job's ranks", progress.epoch, self.stream_settings.to_dict(),
                     saved_stream)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", found[-1], progress.step,
                 progress.epoch, progress.batch_in_epoch)
        self.run_log.write("resume", progress.step, {"checkpoint": str(found[-1]), "world_size": self.ctx.world_size,
                                                     "saved_world_size": meta["world_size"]})
        return progress


def check_task_names(cfg: JobConfig, schema: DatasetSchema) -> None:
    """Every task a config names exists in the dataset (else an error before any training)."""
    tasks = [t.name for t in schema.tasks]
    for key, name in cfg.train.task_names_used().items():
        if name not in tasks:
            raise ConfigError(f"{key}: task {name!r} is not in dataset {schema.root} (its tasks: {tasks})")
