"""Shared machinery of the result benchmarks (census_table.py, census_ablation.py, correlation_sweep.py,
adult_table.py, dml_tuning.py).

Every run goes through the project's own CLI, `mtrec train` then `mtrec evaluate` on the test
split, never a side script: with one process per run, `pipeline.cli.main(argv)` is called inside a
pool worker (a spawned Python process that outlives its runs, so the ~6 s import of torch/TorchRec
is paid once per worker, not twice per run); with `--nproc N > 1` the worker launches torchrun.
`--jobs J` runs J runs at a time, each with cores // J intra-op threads (on 2 cores, two 1-thread
runs train 1.3x the examples per second of one 2-thread run: docs/RESULTS.md).

A run directory is ROOT/<model>/<dml|base>/seed_<s>/; a half-trained run resumes from its newest
complete checkpoint (the trainer does that by itself). Finished runs are recorded in a *ledger*, a
small JSON-lines file committed next to the tables (docs/results/*_runs.jsonl, rewritten
atomically after every run): a run already in the ledger with the same budget is never re-run, so
a sweep resumes across machines and sessions, and `--report-only` rebuilds the tables from the
ledger alone.

Model selection [project]: the trainer validates and checkpoints at every epoch end and stops early
on the config's task; the test split is evaluated once, at the best validation step's checkpoint
(`train.keep_last_checkpoints` is raised to patience + 1 so that it is kept), and the validation
metrics recorded are the trainer's own at that step (the same evaluator code on the same weights).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.runtime.atomic import atomic_write_text  # noqa: E402
from pipeline.eval.report import load_report  # noqa: E402

DML_OVERRIDES = ("model.dml.ctfm.enabled=true", "model.dml.gkd.enabled=true")
# Every run: keep patience 2 (the census configs) + 1 checkpoints, so that the best-validation one
# survives early stopping; read batches in the rank process (no loader worker), since with J runs
# on J cores a worker process per run only adds contention.
RUN_OVERRIDES = ("train.keep_last_checkpoints=3", "data.num_workers=0")
RECORDED_METRICS = ("auc", "ne", "logloss", "calibration", "mse")  # mse: regression tasks only


@dataclass(frozen=True)
class ExtraEvaluation:
    """The evaluated checkpoint scored once more, on the dataset's `split` with `overrides` on top of
    the run's (e.g. another served head); recorded as record["extra"][name]."""

    name: str
    split: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class RunSpec:
    """One (model, DML on/off, seed) cell. `overrides`: extra key=value config overrides, applied
    after the DML switches (so that a spec can turn one DML part back off)."""

    model: str
    config: Path
    dml: bool
    seed: int
    overrides: tuple[str, ...] = ()
    extra: tuple[ExtraEvaluation, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.model}|{'dml' if self.dml else 'base'}|{self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / self.model / ("dml" if self.dml else "base") / f"seed_{self.seed}"

    def all_overrides(self) -> list[str]:
        return [*RUN_OVERRIDES, *(DML_OVERRIDES if self.dml else ()), *self.overrides]


@dataclass(frozen=True)
class Budget:
    """What each run may spend: processes, epochs / steps caps (None = the config's). Part of a
    ledger record: a run finished under another budget does not count as done."""

    nproc: int = 1
    epochs: Optional[int] = None
    max_steps: Optional[int] = None


class Ledger:
    """Finished runs, one JSON line each: {"key", "budget", "valid", "test", "steps", ...}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                        self._records[record["key"]] = record
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{number}: not a ledger record ({e})") from None

    def get(self, spec: RunSpec, budget: Budget) -> Optional[dict[str, Any]]:
        record = self._records.get(spec.key)
        return record if record is not None and record.get("budget") == asdict(budget) else None

    def finished(self, model: str, dml: bool, budget: Budget) -> dict[int, dict[str, Any]]:
        """{seed: record} of every run of (model, dml) finished under `budget`."""
        return {r["seed"]: r for r in self._records.values()
                if r.get("model") == model and r.get("dml") == dml and r.get("budget") == asdict(budget)}

    def add(self, record: Mapping[str, Any]) -> None:
        self._records[record["key"]] = dict(record)
        lines = [json.dumps(self._records[k], sort_keys=True) for k in sorted(self._records)]
        atomic_write_text(self.path, "\n".join(lines) + "\n")


def mtrec_command(nproc: int) -> list[str]:
    """`python -m pipeline` under torchrun with `nproc` processes (nproc > 1 only)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    return [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "pipeline"]


def run_mtrec(argv: Sequence[str], log_file: Path, nproc: int = 1) -> None:
    """Run `mtrec ARGV`, appending its output to `log_file`; on failure raise with the log's tail.

    nproc == 1: in this process (`pipeline.cli.main`), its stdout/stderr file descriptors pointed
    at the log for the duration. nproc > 1: torchrun as a subprocess (it gives each rank one
    OpenMP thread)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"$ mtrec {' '.join(argv)}\n")
        log.flush()
        if nproc > 1:
            code = subprocess.run([*mtrec_command(nproc), *argv], cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        else:
            code = _cli_into(log, argv)
    if code:
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"mtrec {' '.join(argv)} exited {code}; log {log_file}:\n{tail}")


def _cli_into(log: Any, argv: Sequence[str]) -> int:
    from pipeline.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        main(list(argv))
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception:  # noqa: BLE001 - reported with the log's tail by run_mtrec
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def prepare_dataset(args: Sequence[str], out: Path, log_file: Path) -> Path:
    """`mtrec prepare ...` (idempotent: the same parameters reuse the existing dataset)."""
    run_mtrec(["prepare", *args, "--out", str(out)], log_file)
    return out


def prepare_adult(root: Path) -> tuple[Path, Path]:
    """UCI Adult through the no-code path (`mtrec prepare table --spec examples/adult/spec.yaml`,
    then `mtrec init-config --model adatt_sp` as written) under root: (dataset, config)."""
    log = root / "prepare.log"
    data = prepare_dataset(["table", "--spec", str(REPO / "examples" / "adult" / "spec.yaml")], root / "data", log)
    config = root / "adult_adatt_sp.yaml"
    run_mtrec(["init-config", "--data", str(data), "--model", "adatt_sp", "--out", str(config)], log)
    return data, config


def prepare_synthetic(out: Path, log_file: Path, *, correlation: float, rows: int, tasks: int = 2,
                      dense_dim: int = 100, sparse_features: int = 0, vocab: int = 10_000,
                      regression: bool = False) -> Path:
    """`mtrec prepare synthetic` (the MMoE §3 generator, data seed fixed) into out."""
    return prepare_dataset(["synthetic", "--rows", str(rows), "--tasks", str(tasks), "--correlation",
                            str(correlation), "--dense-dim", str(dense_dim), "--sparse-features",
                            str(sparse_features), "--vocab", str(vocab), *(["--regression"] if regression else [])],
                           out, log_file)


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint at the summary's best validation step when it was kept, else the run dir
    (= its newest complete checkpoint)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary.get("best_step")
    candidate = run_dir / "checkpoints" / f"step_{best:08d}" if best is not None else None
    return candidate if candidate is not None and (candidate / "COMPLETE").is_file() else run_dir


def validation_at(run_dir: Path, step: Optional[int]) -> dict[str, Any]:
    """The trainer's validation result at `step` (the last one logged when None) from metrics.jsonl;
    a resumed run may log a step twice: the later line wins."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    valid = [r for r in rows if r["kind"] == "valid" and (step is None or r["step"] == step)]
    if not valid:
        raise ValueError(f"{run_dir}/metrics.jsonl: no validation at step {step}")
    return {"tasks": valid[-1]["tasks"]}


def validation_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Every validation of the run, [{"step", "tasks": compact}] in step order (a step logged twice
    by a resumed run: the later line), so that selection rules can be compared from the ledger."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows if r["kind"] == "valid"}
    return [{"step": step, "tasks": compact(by_step[step])} for step in sorted(by_step)]


def compact(report: Mapping[str, Any]) -> dict[str, dict[str, Optional[float]]]:
    """{task: {metric: value}} for the metrics the tables use."""
    return {task: {m: values[m] for m in RECORDED_METRICS if m in values} for task, values in report["tasks"].items()}


def train_and_evaluate(spec: RunSpec, data: Path, root: Path, budget: Budget) -> dict[str, Any]:
    """Train (or resume) one run, evaluate its best checkpoint on the test split; returns its
    ledger record."""
    started = time.perf_counter()
    run_dir = spec.run_dir(root)
    log_file = run_dir.parent / f"seed_{spec.seed}.log"
    train = ["train", "--config", str(spec.config), "--data", str(data), "--out", str(run_dir),
             "--seed", str(spec.seed)]
    if budget.epochs is not None:
        train += ["--epochs", str(budget.epochs)]
    if budget.max_steps is not None:
        train += ["--max-steps", str(budget.max_steps)]
    run_mtrec([*train, *spec.all_overrides()], log_file, budget.nproc)
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = best_checkpoint(run_dir)

    def evaluate(name: str, split: str, overrides: Sequence[str] = ()) -> dict[str, dict[str, Optional[float]]]:
        report_dir = run_dir / f"report_{name}"
        run_mtrec(["evaluate", "--config", str(spec.config), "--checkpoint", str(checkpoint), "--data",
                   str(data / split), "--out", str(report_dir), *spec.all_overrides(), *overrides], log_file,
                  budget.nproc)
        return compact(load_report(report_dir))

    evaluated_step = summary["best_step"] if checkpoint != run_dir else None
    config = spec.config.resolve()
    record = {"key": spec.key, "model": spec.model, "dml": spec.dml, "seed": spec.seed, "budget": asdict(budget),
              "config": config.relative_to(REPO).as_posix() if config.is_relative_to(REPO) else str(config),
              "overrides": list(spec.overrides), "steps": summary["steps"], "best_step": summary["best_step"],
              "evaluated_step": evaluated_step, "stopped_early": summary["stopped_early"],
              "valid": compact(validation_at(run_dir, evaluated_step)), "test": evaluate("test", "test"),
              "valid_curve": validation_curve(run_dir)}
    if spec.extra:
        record["extra"] = {e.name: evaluate(e.name, e.split, e.overrides) for e in spec.extra}
    return {**record, "wall_s": round(time.perf_counter() - started, 1)}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_all(specs: Sequence[tuple[RunSpec, Path]], root: Path, budget: Budget, ledger: Ledger,
            jobs: int = 1) -> list[str]:
    """Run every (spec, dataset) not yet in the ledger, `jobs` at a time, adding each record as it
    finishes. Returns the failures (one line each); the other runs carry on past a failure."""
    todo = [(spec, data) for spec, data in specs if ledger.get(spec, budget) is None]
    print(f"{len(specs) - len(todo)} of {len(specs)} run(s) already in {ledger.path}; {len(todo)} to run "
          f"({jobs} at a time)", flush=True)
    if not todo:
        return []
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures: list[str] = []
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(train_and_evaluate, spec, data, root, budget): spec for spec, data in todo}
        for done, future in enumerate(as_completed(futures), 1):
            spec = futures[future]
            try:
                record = future.result()
            except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                failures.append(f"{spec.key}: {str(e).splitlines()[0]}")
                print(f"[{done}/{len(todo)}] FAILED {spec.key}: {e}", flush=True)
                continue
            ledger.add(record)
            print(f"[{done}/{len(todo)}] {spec.key}: {record['wall_s']:.0f} s, "
                  f"{time.perf_counter() - started:.0f} s elapsed", flush=True)
    return failures


def chosen_names(option: str, value: str, known: Iterable[str]) -> list[str]:
    """The comma-separated names of a command-line option, each one of `known` (else exit naming it)."""
    names, known = [n.strip() for n in value.split(",") if n.strip()], list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"{option}: unknown {unknown}; choose from {known}")
    return names


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n): one table cell, as fmt_mean_std prints it."""
    return (*mean_std(values), len(values))


def aggregate(reports: Sequence[Mapping[str, Mapping[str, Any]]], metrics: Sequence[str] = ("auc", "ne")
              ) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{task: {metric: (mean, std, n)}} over {task: {metric: value}} reports (nulls are skipped)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for task in reports[0] if reports else ():
        for metric in metrics:
            values = [r[task][metric] for r in reports if r[task].get(metric) is not None]
            if values:
                out.setdefault(task, {})[metric] = summarize(values)
    return out


def task_mean(report: Mapping[str, Mapping[str, Any]], metric: str = "auc") -> Optional[float]:
    """The mean of `metric` over the tasks that have it (binary tasks for auc / logloss, regression
    tasks for mse), None when none has it; report: {task: {metric: value}} (a ledger record's "test")."""
    values = [t[metric] for t in report.values() if t.get(metric) is not None]
    return statistics.fmean(values) if values else None


def fmt_mean_std(cell: Optional[tuple[float, float, int]], digits: int = 4) -> str:
    if cell is None:
        return "n/a"
    mean, std, n = cell
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f} (1 seed)"


def records_for(ledger: Ledger, specs: Iterable[RunSpec], budget: Budget) -> list[dict[str, Any]]:
    """The ledger records of `specs` that are finished (missing ones are left out)."""
    return [r for r in (ledger.get(s, budget) for s in specs) if r is not None]


def diagnose_run(spec: RunSpec, data: Path, root: Path, out_dir: Path, budget: Budget) -> None:
    """`mtrec diagnose` of a finished run (its evaluated checkpoint) into out_dir; skipped when
    out_dir/gates.json exists or the run's checkpoints are not on this machine (ledger-only runs)."""
    run_dir = spec.run_dir(root)
    if (out_dir / "gates.json").is_file() or not (run_dir / "summary.json").is_file():
        return
    run_mtrec(["diagnose", "--config", str(spec.config), "--checkpoint", str(best_checkpoint(run_dir)),
               "--data", str(data), "--out", str(out_dir), *spec.all_overrides()],
              run_dir.parent / f"seed_{spec.seed}.log", budget.nproc)
