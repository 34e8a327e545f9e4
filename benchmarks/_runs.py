"""Shared machinery of the result benchmarks (census_table.py, correlation_sweep.py).

Every run goes through the project's own CLI as a subprocess (`python -m pipeline train|evaluate`,
or torchrun for several processes), never a side script. A run directory is
ROOT/<model>/<dml|base>/seed_<s>/; it is finished when its test report.json exists (report.json is
written last, pipeline/eval/report.py), so a killed sweep re-runs only unfinished runs, and a
half-trained run resumes from its newest complete checkpoint (the trainer does that by itself).

Model selection [project]: the trainer checkpoints at every validation and stops early on the
config's task; the evaluated checkpoint is the one at the best validation step when it was kept
(`train.keep_last_checkpoints` is raised to patience + 1 so that it is), else the latest.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.atomic import atomic_path  # noqa: E402
from pipeline.eval.report import load_report  # noqa: E402

DML_OVERRIDES = ("model.dml.ctfm.enabled=true", "model.dml.gkd.enabled=true")
# patience 2 (the census configs) + 1: the best-validation checkpoint survives early stopping.
KEEP_CHECKPOINTS = "train.keep_last_checkpoints=3"


@dataclass(frozen=True)
class RunSpec:
    """One (model, DML on/off, seed) cell. `overrides`: extra key=value config overrides."""

    model: str
    config: Path
    dml: bool
    seed: int
    overrides: tuple[str, ...] = ()

    def run_dir(self, root: Path) -> Path:
        return root / self.model / ("dml" if self.dml else "base") / f"seed_{self.seed}"

    def all_overrides(self) -> list[str]:
        return [KEEP_CHECKPOINTS, *self.overrides, *(DML_OVERRIDES if self.dml else ())]


@dataclass
class Budget:
    """What each run may spend: processes, epochs / steps caps (None = the config's)."""

    nproc: int = 1
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    timeout_s: float = 6 * 3600
    log: list[str] = field(default_factory=list)


def mtrec_command(nproc: int) -> list[str]:
    """`python -m pipeline` as a plain process, or under torchrun with `nproc` processes."""
    if nproc == 1:
        return [sys.executable, "-m", "pipeline"]
    torchrun = Path(sys.executable).parent / "torchrun"
    return [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "pipeline"]


def run_logged(args: Sequence[str], log_file: Path, timeout_s: float) -> None:
    """Run a command from the repo root, appending its output to `log_file`; on failure raise with
    the log's tail."""
    # The environment is inherited as is: torchrun itself gives each of several ranks one OpenMP
    # thread, a single process keeps torch's default (all cores).
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(args)}\n")
        log.flush()
        proc = subprocess.run(list(args), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0:
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}; log {log_file}:\n{tail}")


def prepare_dataset(args: Sequence[str], out: Path, log_file: Path) -> Path:
    """`mtrec prepare ...` (idempotent: the same parameters reuse the existing dataset)."""
    run_logged([*mtrec_command(1), "prepare", *args, "--out", str(out)], log_file, timeout_s=3600)
    return out


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint at the summary's best validation step when it was kept, else the run dir
    (= its newest complete checkpoint)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary.get("best_step")
    candidate = run_dir / "checkpoints" / f"step_{best:08d}" if best is not None else None
    return candidate if candidate is not None and (candidate / "COMPLETE").is_file() else run_dir


def train_and_evaluate(spec: RunSpec, data: Path, root: Path, budget: Budget,
                       splits: Iterable[str] = ("valid", "test")) -> dict[str, dict[str, Any]]:
    """Train (or resume) one run and evaluate it on `splits`; returns {split: report}. A run whose
    report_test/report.json exists is not touched (resumable sweeps)."""
    run_dir = spec.run_dir(root)
    reports = {s: run_dir / f"report_{s}" for s in splits}
    if all((r / "report.json").is_file() for r in reports.values()):
        return {s: load_report(r) for s, r in reports.items()}
    log_file = run_dir.parent / f"seed_{spec.seed}.log"
    started = time.perf_counter()
    train = [*mtrec_command(budget.nproc), "train", "--config", str(spec.config), "--data", str(data),
             "--out", str(run_dir), "--seed", str(spec.seed)]
    if budget.epochs is not None:
        train += ["--epochs", str(budget.epochs)]
    if budget.max_steps is not None:
        train += ["--max-steps", str(budget.max_steps)]
    run_logged([*train, *spec.all_overrides()], log_file, budget.timeout_s)
    checkpoint = best_checkpoint(run_dir)
    for split, report_dir in reports.items():
        run_logged([*mtrec_command(budget.nproc), "evaluate", "--config", str(spec.config), "--checkpoint",
                    str(checkpoint), "--data", str(data / split), "--out", str(report_dir),
                    *spec.all_overrides()], log_file, budget.timeout_s)
    budget.log.append(f"{spec.model} {'dml' if spec.dml else 'base'} seed {spec.seed}: "
                      f"{time.perf_counter() - started:.0f} s ({checkpoint.name})")
    return {s: load_report(r) for s, r in reports.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(reports: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("auc", "ne")
              ) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{task: {metric: (mean, std, n)}} over reports (tasks/metrics that are null are skipped)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for task in reports[0]["tasks"]:
        for metric in metrics:
            values = [r["tasks"][task][metric] for r in reports if r["tasks"][task].get(metric) is not None]
            if values:
                out.setdefault(task, {})[metric] = (*mean_std(values), len(values))
    return out


def fmt_mean_std(cell: Optional[tuple[float, float, int]], digits: int = 4) -> str:
    if cell is None:
        return "n/a"
    mean, std, n = cell
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f} (1 seed)"


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib Figure as PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def diagnose_run(spec: RunSpec, data: Path, root: Path, out_dir: Path, budget: Budget) -> Path:
    """`mtrec diagnose` of a finished run (its evaluated checkpoint) into out_dir; skipped when
    out_dir/gates.json exists."""
    if not (out_dir / "gates.json").is_file():
        run_dir = spec.run_dir(root)
        run_logged([*mtrec_command(budget.nproc), "diagnose", "--config", str(spec.config), "--checkpoint",
                    str(best_checkpoint(run_dir)), "--data", str(data), "--out", str(out_dir),
                    *spec.all_overrides()], run_dir.parent / f"seed_{spec.seed}.log", budget.timeout_s)
    return out_dir
