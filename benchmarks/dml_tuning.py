"""Mutual learning tuned on validation: which knobs of Deep Mutual Learning across task towers
(λ, τ, CTFM, GKD, the served head) help AdaTT-sp on census, Adult and the synthetic task-correlation
sweep, and whether the tuned setting beats mutual learning off on test, seed by seed
(docs/RESULTS.md "Mutual learning, tuned on validation"). Not a test.

    .venv/bin/python benchmarks/dml_tuning.py --jobs 2                 # every dataset (docs/RESULTS.md)
    .venv/bin/python benchmarks/dml_tuning.py --datasets synthetic_p0 --tune-seeds 1 --seeds 2 --max-steps 10 \\
        --runs /tmp/dt --out-dir /tmp/dt/out                            # a smoke run

Per dataset, two stages, both through `mtrec train` / `mtrec evaluate` (benchmarks/_runs.py):
1. *Tuning* (validation only): the grid below, one factor at a time around the default setting
   (CTFM + GKD, λ = 0.5, τ = 1), `--tune-seeds` seeds each. λ is chosen among LAMBDAS at τ = 1, τ
   among TAUS at λ = 0.5, the parts among {both, GKD only, CTFM only} at the default λ and τ, each
   by the mean over the binary tasks of the validation AUC, mean over the tuning seeds.
2. *Final*: the tuned setting and mutual learning off, `--seeds` seeds each (tuning runs of the
   same setting are reused). The served head (global, local or the mean of both) is chosen on the
   tuned runs' validation; then test: per task and task-mean AUC, NE and calibration, the paired
   difference by seed and its paired t-test p-value.
Every GKD run is also evaluated with the local and the mean head on valid and test (its best
checkpoint was selected by the global head's validation, the one served during training).
Ledger: docs/results/dml_tuning_runs.jsonl (resumable; `--report-only` rebuilds the tables).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from _runs import (REPO, Budget, ExtraEvaluation, Ledger, RunSpec, chosen_names, fmt_mean_std,
                   prepare_adult, prepare_dataset, prepare_synthetic, records_for, run_all, summarize, task_mean)
from pipeline.runtime.atomic import atomic_write_text

LAMBDAS = (0.1, 0.3, 0.5, 1.0)  # GKD's mutual_weight λ; 0.5 is the config default
TAUS = (1.0, 2.0, 4.0)  # GKD's distillation temperature τ
HEADS = ("global", "local", "mean")  # model.dml.gkd.serve_head; global is the default
PARTS = ("both", "gkd", "ctfm")


@dataclass(frozen=True)
class Setting:
    """One mutual-learning setting: which parts are on (off / both / gkd / ctfm), λ and τ of GKD."""

    parts: str
    lam: float = 0.5
    tau: float = 1.0

    @property
    def has_gkd(self) -> bool:
        return self.parts in ("both", "gkd")

    @property
    def name(self) -> str:
        return f"{self.parts}_lam{self.lam:g}_tau{self.tau:g}" if self.has_gkd else self.parts

    def overrides(self) -> tuple[str, ...]:
        off = {"gkd": ("model.dml.ctfm.enabled=false",), "ctfm": ("model.dml.gkd.enabled=false",)}.get(self.parts, ())
        knobs = (f"model.dml.gkd.mutual_weight={self.lam:g}", f"model.dml.gkd.tau={self.tau:g}") if self.has_gkd else ()
        return (*off, *knobs)


OFF = Setting("off")
GRID = tuple(dict.fromkeys((OFF, *(Setting("both", lam) for lam in LAMBDAS), *(Setting("both", tau=t) for t in TAUS),
                            *(Setting(p) for p in PARTS))))


@dataclass(frozen=True)
class Dataset:
    """A dataset of the study: how to prepare it, the AdaTT-sp config, its budget and overrides."""

    name: str
    budget: Budget
    overrides: tuple[str, ...] = ()
    correlation: Optional[float] = None  # synthetic only
    note: str = ""

    def config(self, root: Path) -> Path:
        """AdaTT-sp: census's shipped config, or what `mtrec init-config` wrote for Adult."""
        if self.name == "adult":
            return root / "adult" / "adult_adatt_sp.yaml"
        return REPO / "configs" / "census_adatt.yaml"

    def prepare(self, root: Path) -> Path:
        """The dataset directory under root (Adult: also its config, at self.config(root))."""
        if self.name == "census":
            return prepare_dataset(["census"], root / "data" / "census", root / "prepare.log")
        if self.name == "adult":
            data, config = prepare_adult(root / "adult")
            assert config == self.config(root)
            return data
        return prepare_synthetic(root / "data" / self.name, root / "prepare.log", correlation=self.correlation,
                                 rows=100_000, sparse_features=4)


DATASETS = {d.name: d for d in (
    *(Dataset(f"synthetic_p{p:g}", Budget(epochs=4), ("train.early_stopping.task=t1",), p,
              "`mtrec prepare synthetic`, 100,000 rows, 2 binary tasks, 4 id features (the sweep's `sparse` "
              "variant); census_adatt.yaml, 4 epochs, early stopping on t1") for p in (0.0, 0.5, 0.9, 1.0)),
    Dataset("adult", Budget(max_steps=300), note="examples/adult/spec.yaml; `mtrec init-config --model adatt_sp`, "
            "300 steps (docs/DATA.md)"),
    Dataset("census", Budget(), note="`mtrec prepare census`; configs/census_adatt.yaml as shipped (15 epochs, "
            "early stopping on the mean validation AUC)"),
)}


@dataclass
class Study:
    """One dataset's runs and choices, filled from the ledger."""

    dataset: Dataset
    config: Path
    data: Optional[Path] = None
    scores: dict[Setting, tuple[float, float, int]] = field(default_factory=dict)  # tuning: valid mean AUC
    tuned: Optional[Setting] = None


def spec_of(dataset: Dataset, config: Path, setting: Setting, seed: int) -> RunSpec:
    extra = tuple(ExtraEvaluation(f"{split}_{head}", split, (f"model.dml.gkd.serve_head={head}",))
                  for head in HEADS[1:] for split in ("valid", "test")) if setting.has_gkd else ()
    return RunSpec(f"{dataset.name}/{setting.name}", config, setting.parts != "off", seed,
                   (*dataset.overrides, *setting.overrides()), extra)


def served(record: dict[str, Any], split: str, head: str) -> dict[str, Any]:
    """The record's {task: metrics} on `split` with the served `head` (global: the run's own)."""
    return record[split] if head == "global" else record["extra"][f"{split}_{head}"]


def valid_score(records: Sequence[dict[str, Any]], head: str = "global") -> tuple[float, float, int]:
    return summarize([task_mean(served(r, "valid", head)) for r in records])


def choose(scores: dict[Setting, tuple[float, float, int]]) -> Setting:
    """Coordinate-wise: λ at τ = 1, τ at λ = 0.5, the parts at the default (module docstring)."""
    lam = max(LAMBDAS, key=lambda v: scores[Setting("both", v)][0])
    tau = max(TAUS, key=lambda v: scores[Setting("both", tau=v)][0])
    parts = max(PARTS, key=lambda p: scores[Setting(p)][0])
    return Setting(parts) if parts == "ctfm" else Setting(parts, lam, tau)


def choose_head(records: Sequence[dict[str, Any]], setting: Setting) -> str:
    return max(HEADS, key=lambda h: valid_score(records, h)[0]) if setting.has_gkd else "global"


def tune(study: Study, ledger: Ledger, budget: Budget, seeds: int, args: argparse.Namespace) -> list[str]:
    """Stage 1 (runs unless --report-only), then study.scores and study.tuned from the ledger."""
    specs = {s: [spec_of(study.dataset, study.config, s, seed) for seed in range(seeds)] for s in GRID}
    failures = [] if args.report_only else run_all(
        [(specs[s][seed], study.data) for seed in range(seeds) for s in GRID], args.runs, budget, ledger, args.jobs)
    for setting, setting_specs in specs.items():
        records = records_for(ledger, setting_specs, budget)
        if len(records) == seeds:
            study.scores[setting] = valid_score(records)
    if len(study.scores) == len(GRID):
        study.tuned = choose(study.scores)
    return failures


def final_specs(study: Study, seeds: int) -> dict[Setting, list[RunSpec]]:
    assert study.tuned is not None
    return {s: [spec_of(study.dataset, study.config, s, seed) for seed in range(seeds)] for s in (OFF, study.tuned)}


def tuning_lines(study: Study) -> list[str]:
    off = study.scores.get(OFF)
    lines = ["| setting | seeds | valid AUC, mean of tasks | Δ vs off |", "|---|---|---|---|"]
    for setting, score in study.scores.items():
        mark = " **(tuned)**" if setting == study.tuned else ""
        delta = f"{score[0] - off[0]:+.4f}" if off and setting != OFF else ""
        lines.append(f"| {setting.name}{mark} | {score[2]} | {fmt_mean_std(score)} | {delta} |")
    if study.tuned is not None:
        lines += ["", f"Tuned setting: `{study.tuned.name}` (the best λ at τ = 1, the best τ at λ = 0.5 and the best "
                  "parts at the default, combined; it may be a setting the grid did not run)."]
    return lines


def paired(off: Sequence[dict[str, Any]], tuned: Sequence[dict[str, Any]], off_value: Callable[[dict], float],
           tuned_value: Callable[[dict], float]) -> str:
    """Mean of tuned - off over the seeds both have, the paired t-test p-value, the seeds where tuned > off."""
    from scipy.stats import ttest_rel

    by_seed = {r["seed"]: off_value(r) for r in off}
    pairs = [(by_seed[r["seed"]], tuned_value(r)) for r in tuned if r["seed"] in by_seed]
    if len(pairs) < 2:
        return "n/a"
    diffs = [b - a for a, b in pairs]
    p = ttest_rel([b for _, b in pairs], [a for a, _ in pairs]).pvalue
    return f"{statistics.fmean(diffs):+.4f} (p = {p:.2g}, higher in {sum(d > 0 for d in diffs)} of {len(diffs)} seeds)"


def calibration_error(report: dict[str, dict[str, Any]]) -> float:
    """Mean over the tasks of |mean prediction / positive rate - 1| (0 = calibrated on average)."""
    return statistics.fmean(abs(m["calibration"] - 1) for m in report.values() if m.get("calibration") is not None)


def final_lines(study: Study, ledger: Ledger, budget: Budget, seeds: int) -> list[str]:
    """The head table and the test comparison of the tuned setting against off."""
    specs = final_specs(study, seeds)
    off, tuned = (records_for(ledger, specs[s], budget) for s in (OFF, study.tuned))
    if not off or not tuned:
        return ["", "(final runs not finished yet)"]
    head = choose_head(tuned, study.tuned)
    lines = ["", f"Served head of `{study.tuned.name}` (chosen on validation; {len(tuned)} seeds):", "",
             "| head | valid AUC, mean of tasks | test AUC, mean of tasks |", "|---|---|---|"]
    for h in (HEADS if study.tuned.has_gkd else ("global",)):
        test = summarize([task_mean(served(r, "test", h)) for r in tuned])
        lines.append(f"| {h}{' **(served)**' if h == head else ''} | {fmt_mean_std(valid_score(tuned, h))} "
                     f"| {fmt_mean_std(test)} |")
    metrics: list[tuple[str, Callable[[dict], float]]] = [
        (f"AUC {t}", lambda report, t=t: report[t]["auc"])
        for t, m in off[0]["test"].items() if m.get("auc") is not None]
    metrics += [(f"{m.upper()}, mean of tasks", lambda report, m=m: task_mean(report, m)) for m in ("auc", "ne")]
    metrics.append(("\\|calibration − 1\\|, mean of tasks", calibration_error))
    lines += ["", f"Test, `{study.tuned.name}` ({head} head) vs mutual learning off, seeds 0..{seeds - 1} "
              f"({len(off)} off / {len(tuned)} tuned finished); Δ = tuned − off, paired by seed:", "",
              "| metric | off | tuned | Δ (paired t-test; seeds where tuned is higher) |", "|---|---|---|---|"]
    for label, value in metrics:
        off_value = lambda r, value=value: value(r["test"])  # noqa: E731
        tuned_value = lambda r, value=value: value(served(r, "test", head))  # noqa: E731
        cells = [fmt_mean_std(summarize([f(r) for r in rs]))
                 for f, rs in ((off_value, off), (tuned_value, tuned))]
        lines.append(f"| {label} | {' | '.join(cells)} | {paired(off, tuned, off_value, tuned_value)} |")
    return lines


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of: {', '.join(DATASETS)}")
    p.add_argument("--tune-seeds", type=int, default=3, help="seeds 0..N-1 per setting of the tuning grid")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 of the tuned setting and of off (test)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each with cores // jobs threads)")
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps per run (smoke runs)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "results" / "dml_tuning", help="run directories")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "results",
                   help="dml_tuning.md and dml_tuning_runs.jsonl (the ledger)")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables from the ledger")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    names = chosen_names("--datasets", args.datasets, DATASETS)
    if args.seeds < args.tune_seeds:
        raise SystemExit(f"--seeds ({args.seeds}) must be >= --tune-seeds ({args.tune_seeds})")
    ledger = Ledger(args.out_dir / "dml_tuning_runs.jsonl")
    failures: list[str] = []
    sections = []
    for name in names:
        dataset = DATASETS[name]
        budget = replace(dataset.budget, max_steps=args.max_steps) if args.max_steps else dataset.budget
        study = Study(dataset, dataset.config(args.runs), None if args.report_only else dataset.prepare(args.runs))
        failures += tune(study, ledger, budget, args.tune_seeds, args)
        caps = ", ".join(f"{k} {v}" for k, v in asdict(budget).items() if v is not None and k != "nproc")
        lines = [f"## {name}", "", f"{dataset.note}{f' ({caps})' if caps else ''}.", "",
                 "Tuning grid (validation only):", "",
                 *tuning_lines(study)]
        if study.tuned is not None:
            specs = final_specs(study, args.seeds)
            if not args.report_only:
                order = [(specs[s][seed], study.data) for seed in range(args.seeds) for s in specs]
                failures += run_all(order, args.runs, budget, ledger, args.jobs)
            lines += final_lines(study, ledger, budget, args.seeds)
        sections.append("\n".join(lines))
    command = " ".join(["python", *sys.argv])
    header = ["<!-- written by benchmarks/dml_tuning.py; do not edit -->", f"Command: `{command}`  ",
              f"tuning seeds {args.tune_seeds}, final seeds {args.seeds}; wall time of this invocation "
              f"{time.perf_counter() - started:.0f} s (runs found in the ledger are not re-run).", ""]
    out = args.out_dir / "dml_tuning.md"
    atomic_write_text(out, "\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {out}")
    if failures:
        raise SystemExit("failed runs (re-run the same command to retry them):\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
