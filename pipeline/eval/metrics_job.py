"""`mtrec metrics`: per-task metrics over existing Parquet prediction logs, streamed, on any world size.

Columns per task: `<task>_label`, `<task>_pred`, optional `<task>_mask`; optional weight column
(--weight-column; without it, a column named "weight" when the files have one, else every row
weighs 1). A column named by --weight-column, --user-column or --segment-by must exist.
Row groups are read with column projection in batches of --batch-rows, so memory is
O(batch + tasks × bins), independent of the log's length. Under torchrun every rank reads a
contiguous, row-balanced share of the row groups (each exactly once; whole files with
--user-column, since GAUC needs each user inside one file), the states are all-reduced and rank 0
writes the report.

Bad-input policy (docs/METRICS.md): a missing or non-numeric column, a file that is not Parquet,
and bad values in rows that count (NaN/null or out-of-range predictions and labels, masks not 0/1,
negative or null weights) are errors naming the file, row group and column. Files with zero rows
are skipped and counted (`inputs.empty_files`); no rows at all is an error.

Start-up: a 1-process job imports neither torch nor matplotlib (only pyarrow and numpy); torch's
process group is joined only under WORLD_SIZE > 1, matplotlib only when plots are written.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from models.inputs import Task
from pipeline.data.schema import DataError
from pipeline.data.units import WorkUnit, assign_units, expand_parquet, list_units, read_footer
from pipeline.eval.report import write_report
from pipeline.metrics.grouped import GroupedAucMetrics
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.metrics.numerics import MetricInputError
from pipeline.metrics.segmented import SegmentedMetrics
from pipeline.metrics.task_state import AucMode
from pipeline.runtime.collectives import all_reduce_arrays_, initialised_dist

log = logging.getLogger(__name__)

DEFAULT_WEIGHT_COLUMN = "weight"  # used when present and no weight column is named [project]


@dataclass(frozen=True)
class MetricsJob:
    predictions: str
    tasks: tuple[Task, ...]
    out: str
    auc_mode: AucMode = "bounded"
    weight_column: str | None = None  # None: DEFAULT_WEIGHT_COLUMN when the files have it, else weight 1
    segment_by: str | None = None
    user_column: str | None = None
    baseline_rates: dict[str, float] = field(default_factory=dict)
    batch_rows: int = 1 << 20
    plots: bool = True


def _split_names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_baseline_rates(text: str | None) -> dict[str, float]:
    """'a=0.03,b=0.1' -> {'a': 0.03, 'b': 0.1}."""
    rates = {}
    for item in _split_names(text or ""):
        name, sep, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--baseline-rates: expected task=rate, got {item!r}")
    return rates


def job_from_args(args: argparse.Namespace) -> MetricsJob:
    names = _split_names(args.tasks)
    regression = set(_split_names(args.regression_tasks))
    if not names:
        raise ValueError("--tasks: no task names given")
    if regression - set(names):
        raise ValueError(f"--regression-tasks {sorted(regression - set(names))} are not in --tasks {names}")
    if args.batch_rows <= 0:
        raise ValueError(f"--batch-rows must be positive, got {args.batch_rows}")
    return MetricsJob(
        predictions=args.predictions, out=args.out, auc_mode=args.auc_mode, weight_column=args.weight_column,
        tasks=tuple(Task(n, "regression" if n in regression else "binary") for n in names),
        segment_by=args.segment_by, user_column=args.user_column,
        baseline_rates=parse_baseline_rates(args.baseline_rates), batch_rows=args.batch_rows, plots=not args.no_plots)


def metrics_main(args: argparse.Namespace) -> None:
    run_metrics(job_from_args(args))


# ----------------------------------------------------------------------------- files and columns


@dataclass(frozen=True)
class ColumnLayout:
    """Which columns the job reads; optional ones are present in every file or in none."""

    labels: tuple[str, ...]
    preds: tuple[str, ...]
    masks: tuple[str | None, ...]
    weight: str | None
    segment: str | None
    user: str | None

    def columns(self) -> list[str]:
        optional = [*self.masks, self.weight, self.segment, self.user]
        return list(dict.fromkeys([*self.labels, *self.preds, *(c for c in optional if c)]))

    def field_column(self, task: str | None, field_name: str) -> str | None:
        """The column behind a MetricInputError field."""
        if field_name in ("pred", "label", "mask"):
            return f"{task}_{field_name}"
        return {"weight": self.weight, "user": self.user}.get(field_name)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def inspect_columns(paths: list[str], job: MetricsJob) -> ColumnLayout:
    """Check every file's schema (footers only) and decide the optional columns."""
    schemas = {p: read_footer(p).schema.to_arrow_schema() for p in paths}
    tasks = [t.name for t in job.tasks]

    def require(column: str, numeric: bool) -> None:
        for path, schema in schemas.items():
            if column not in schema.names:
                raise DataError(f"{path}: missing column {column!r} (has {schema.names})")
            if numeric and not _is_numeric(schema.field(column).type):
                raise DataError(f"{path}: column {column!r} has type {schema.field(column).type}, expected a number")

    def optional(column: str) -> str | None:
        having = [p for p, s in schemas.items() if column in s.names]
        if having and len(having) != len(paths):
            lacking = [p for p in paths if p not in having]
            raise DataError(f"column {column!r} is in {len(having)} of {len(paths)} files but missing from "
                            f"{lacking[:3]}: it must be in all files or in none")
        if having:
            require(column, numeric=column not in (job.segment_by, job.user_column))
        return column if having else None

    for name in tasks:
        require(f"{name}_label", numeric=True)
        require(f"{name}_pred", numeric=True)
    for column in (job.segment_by, job.user_column):
        if column:
            require(column, numeric=False)
    if job.weight_column:  # named explicitly: must exist
        require(job.weight_column, numeric=True)
    layout = ColumnLayout(labels=tuple(f"{n}_label" for n in tasks), preds=tuple(f"{n}_pred" for n in tasks),
                          masks=tuple(optional(f"{n}_mask") for n in tasks),
                          weight=job.weight_column or optional(DEFAULT_WEIGHT_COLUMN),
                          segment=job.segment_by, user=job.user_column)
    if layout.weight is None:
        log.info("no %r column and no --weight-column: every row has weight 1", DEFAULT_WEIGHT_COLUMN)
    return layout


def _as_float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 numpy values with NaN for nulls (bad values are caught by the accumulators)."""
    if column.type != pa.float64():
        column = pc.cast(column, pa.float64())
    return column.to_numpy(zero_copy_only=False)


def _matrix(batch: pa.RecordBatch, columns: tuple[str | None, ...]) -> np.ndarray:
    """[B, T] float64, column-major; a None column is all ones (a task without mask column)."""
    out = np.empty((batch.num_rows, len(columns)), dtype=np.float64, order="F")
    for t, name in enumerate(columns):
        out[:, t] = 1.0 if name is None else _as_float(batch.column(name))
    return out


# ----------------------------------------------------------------------------- the job


@dataclass
class Accumulators:
    """Everything a job sums: the task metrics and, when asked for, GAUC and per-segment metrics."""

    metrics: MultiTaskMetrics
    gauc: GroupedAucMetrics | None
    segments: SegmentedMetrics | None
    segment_column: str | None

    @classmethod
    def for_job(cls, job: MetricsJob) -> "Accumulators":
        binary = [t.name for t in job.tasks if t.kind == "binary"]
        return cls(metrics=MultiTaskMetrics(job.tasks, job.auc_mode, baseline_rates=job.baseline_rates),
                   gauc=GroupedAucMetrics(binary) if job.user_column and binary else None,
                   segments=SegmentedMetrics(job.tasks, job.auc_mode, baseline_rates=job.baseline_rates)
                   if job.segment_by else None, segment_column=job.segment_by)

    def update(self, batch: pa.RecordBatch, layout: ColumnLayout, binary: list[int]) -> None:
        preds, labels = _matrix(batch, layout.preds), _matrix(batch, layout.labels)
        masks = _matrix(batch, layout.masks) if any(layout.masks) else None
        weights = _as_float(batch.column(layout.weight)) if layout.weight else None
        self.metrics.update(preds, labels, masks, weights)
        if self.gauc is not None:
            users = batch.column(layout.user)
            if users.null_count:
                raise MetricInputError(None, "user", f"{users.null_count} null user ids")
            self.gauc.update(users.to_numpy(zero_copy_only=False), preds[:, binary], labels[:, binary],
                             None if masks is None else masks[:, binary], weights)
        if self.segments is not None:
            encoded = pc.dictionary_encode(pc.fill_null(pc.cast(batch.column(layout.segment), pa.string()), "<null>"))
            self.segments.update(encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist(),
                                 preds, labels, masks, weights)

    def end_of_file(self) -> None:
        if self.gauc is not None:
            self.gauc.flush()

    def all_reduce_(self) -> None:
        for acc in (self.metrics, self.gauc, self.segments):
            if acc is not None:
                acc.all_reduce_()

    def report(self) -> dict[str, Any]:
        report = self.metrics.compute()
        if self.gauc is not None:
            for task, extra in self.gauc.compute().items():
                metrics = report["tasks"][task]
                metrics["null_reasons"].update(extra.pop("null_reasons"))
                metrics.update(extra)
        if self.segments is not None:
            report["segments"] = {"column": self.segment_column, "values": self.segments.compute()}
        return report


def _my_units(units: list[WorkUnit], rank: int, world: int, whole_files: bool) -> list[WorkUnit]:
    """This rank's row groups; whole files (every row group of a file on one rank) when `whole_files`."""
    if not whole_files:
        return assign_units(units, rank, world, 0, 0, shuffle=False, seed=0, epoch=0)
    by_file = {path: list(group) for path, group in groupby(units, key=lambda u: u.path)}
    # One pseudo-unit per file (row_group 0 stands for the whole file) for the row-balanced split.
    files = [WorkUnit(path, 0, sum(u.num_rows for u in group)) for path, group in by_file.items()]
    return [u for f in assign_units(files, rank, world, 0, 0, shuffle=False, seed=0, epoch=0) for u in by_file[f.path]]


def _stream(units: list[WorkUnit], layout: ColumnLayout, job: MetricsJob, acc: Accumulators, progress: bool) -> None:
    """Feed every batch of `units` (one ParquetFile per file, column projection) to the accumulators."""
    binary = [t for t, task in enumerate(job.tasks) if task.kind == "binary"]
    columns = layout.columns()
    with tqdm(total=sum(u.num_rows for u in units), unit="rows", unit_scale=True, disable=None if progress else True,
              desc="metrics") as bar:
        for path, file_units in groupby(units, key=lambda u: u.path):
            parquet = pq.ParquetFile(path)
            for unit in file_units:
                where = f"{path} row group {unit.row_group}"
                try:
                    for batch in parquet.iter_batches(job.batch_rows, row_groups=[unit.row_group], columns=columns):
                        acc.update(batch, layout, binary)
                        bar.update(batch.num_rows)
                except MetricInputError as e:
                    raise DataError(f"{where}: column {layout.field_column(e.task, e.field)!r}: {e.detail}") from None
                except (pa.ArrowException, OSError) as e:  # corrupt pages: pyarrow raises OSError
                    raise DataError(f"{where}: cannot read ({e})") from None
            acc.end_of_file()


def _world() -> tuple[int, int, bool]:
    """(rank, world size, whether this call joined the process group).

    The caller's process group when there is one; under torchrun (WORLD_SIZE > 1) the shared
    set-up, with gloo even on CUDA hosts (the metric states live on the CPU) [project]; else one
    process without a group, so that torch is never imported."""
    dist = initialised_dist()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pipeline.runtime.distributed import init_distributed  # imports torch: only for several ranks

        ctx = init_distributed(backend="gloo")
        return ctx.rank, ctx.world_size, True
    return 0, 1, False


def _agree_on_failure(error: Exception | None, world: int) -> None:
    """Raise on every rank when any rank failed, so that no rank waits forever in the all-reduce."""
    if world > 1:
        failed = np.array([int(error is not None)], dtype=np.int64)
        all_reduce_arrays_([failed])
        if failed[0] and error is None:
            raise DataError(f"{int(failed[0])} other rank(s) failed reading their share of the predictions; "
                            "see their log")
    if error is not None:
        raise error


def run_metrics(job: MetricsJob) -> dict[str, Any] | None:
    """Run the job; returns the report on rank 0 (None on other ranks)."""
    paths = expand_parquet(job.predictions, "--predictions")
    layout = inspect_columns(paths, job)
    units = list_units(paths)
    rank, world, created_group = _world()
    try:
        mine = _my_units(units, rank, world, whole_files=job.user_column is not None)
        log.info("%d files, %d row groups, %d rows; this rank (%d of %d) reads %d row groups, %d rows", len(paths),
                 len(units), sum(u.num_rows for u in units), rank, world, len(mine), sum(u.num_rows for u in mine))
        acc = Accumulators.for_job(job)
        start, error = time.perf_counter(), None
        try:
            _stream(mine, layout, job, acc, progress=rank == 0)
        except (ValueError, OSError) as e:
            error = e
        _agree_on_failure(error, world)
        acc.all_reduce_()
        if rank != 0:
            return None
        report = acc.report()
        elapsed = time.perf_counter() - start
        log.info("%d rows in %.1f s (%.0f rows/s over %d rank(s))", report["rows"], elapsed,
                 report["rows"] / max(elapsed, 1e-9), world)
        report["inputs"] = {"predictions": job.predictions, "files": len(paths),
                            "empty_files": len(paths) - len({u.path for u in units}), "row_groups": len(units),
                            "rows_read": sum(u.num_rows for u in units), "world_size": world,
                            "weight_column": layout.weight, "mask_columns": [m for m in layout.masks if m],
                            "user_column": layout.user, "baseline_rates": job.baseline_rates}
        path = write_report(job.out, report, acc.metrics.histograms() if job.plots else None,
                            acc.metrics.mantissa_bits)
        log.info("report written: %s", path)
        return report
    finally:
        if created_group:
            from pipeline.runtime.distributed import shutdown_distributed

            shutdown_distributed()
