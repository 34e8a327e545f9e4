"""Task-correlation sweep (MMoE §3's synthetic study): `mtrec prepare synthetic` at several task
correlations, dense-only and with sparse id features, then shared-bottom vs MMoE vs PLE vs AdaTT
(mutual learning off and on) over several seeds through `mtrec train` / `mtrec evaluate`; writes
test AUC and test log loss (mean over the binary tasks, mean ± std over seeds) against the
correlation as Markdown + PNG. Not a test.

    .venv/bin/python benchmarks/correlation_sweep.py --seeds 2 --rows 50000 --epochs 4 --jobs 2   # docs/RESULTS.md
    .venv/bin/python benchmarks/correlation_sweep.py --seeds 1 --rows 20000 --correlations 0.0,1.0 \\
        --models mmoe --no-dml --variants dense --max-steps 10 --runs /tmp/cs --out-dir /tmp/cs/out   # smoke

[project] The models are the census configs' backbones and training recipe (configs/census_*.yaml)
with early stopping on task t1; the generator's binary labels are 1[y_t > median] (docs/MATH.md §8).
Resumable like census_table.py (benchmarks/_runs.py): the ledger is
docs/results/correlation_sweep_runs.jsonl; `--report-only` rebuilds the table and plot from it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _runs import (REPO, Budget, Ledger, RunSpec, chosen_names, prepare_synthetic, records_for, run_all,
                   summarize, task_mean)
from pipeline.runtime.atomic import atomic_write_text
from pipeline.eval.plots import save_png

MODELS = {
    "shared_bottom": "configs/census_shared_bottom.yaml",
    "mmoe": "configs/census_mmoe.yaml",
    "ple": "configs/census_ple.yaml",
    "adatt": "configs/census_adatt.yaml",
}
# "regression": the dense variant plus the generator's regression task t1_value = y_1 (MMoE §3
# plots the regression loss); its test MSE is the third metric.
VARIANTS = ("dense", "sparse", "regression")
METRICS = (("auc", "test AUC (mean over binary tasks)"), ("logloss", "test log loss (mean over binary tasks)"),
           ("mse", "test MSE of the regression task t1_value (variant regression)"))
OVERRIDES = ("train.early_stopping.task=t1",)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--correlations", default="0.0,0.5,0.9,1.0")
    p.add_argument("--variants", default="dense,sparse",
                   help="dense (no id features), sparse (with id features), regression (dense + a regression task)")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (the data seed is fixed)")
    p.add_argument("--no-dml", action="store_true", help="only mutual learning off")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--dense-dim", type=int, default=100, help="MMoE §3 uses d = 100")
    p.add_argument("--sparse-features", type=int, default=4, help="id features of the sparse variant")
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each with cores // jobs threads)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "results" / "correlation_sweep")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "results")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables from the ledger")
    return p.parse_args()


def prepare(args: argparse.Namespace, variant: str, correlation: float) -> Path:
    return prepare_synthetic(args.runs / "data" / f"{variant}_p{correlation:g}", args.runs / "prepare.log",
                             correlation=correlation, rows=args.rows, tasks=args.tasks, dense_dim=args.dense_dim,
                             sparse_features=args.sparse_features if variant == "sparse" else 0, vocab=args.vocab,
                             regression=variant == "regression")


def markdown(cells: dict, correlations: list[float], command: str, wall_s: float, run_s: float, jobs: int) -> str:
    """cells: {(variant, model, dml): {correlation: {metric: (mean, std, n)}}}."""
    lines = ["<!-- written by benchmarks/correlation_sweep.py; do not edit -->", f"Command: `{command}`  ",
             f"Wall time of this invocation: {wall_s:.0f} s (runs found in the ledger are not re-run); sum of the "
             f"listed runs' own wall times: {run_s:.0f} s, {jobs} at a time.", ""]
    for metric, title in METRICS:
        lines += [f"### {title}, mean ± std over seeds", "",
                  "| data | model | DML | " + " | ".join(f"p = {c:g}" for c in correlations) + " |",
                  "|---|---|---|" + "---|" * len(correlations)]
        for (variant, model, dml), by_corr in cells.items():
            values = []
            if not any(metric in by_corr.get(c, {}) for c in correlations):
                continue
            for c in correlations:
                if metric not in by_corr.get(c, {}):
                    values.append("n/a")
                    continue
                mean, std, n = by_corr[c][metric]
                values.append(f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f} (1 seed)")
            lines.append(f"| {variant} | {model} | {'on' if dml else 'off'} | {' | '.join(values)} |")
        lines.append("")
    return "\n".join(lines)


def plot(cells: dict, variants: list[str], correlations: list[float], path: Path) -> None:
    """One row per variant, one panel per metric that variant has (mse: the regression variant)."""
    from matplotlib.figure import Figure

    def has(variant: str, metric: str) -> bool:
        return any(metric in m for (v, _, _), by_corr in cells.items() if v == variant for m in by_corr.values())

    panels = {v: [(m, t) for m, t in METRICS if has(v, m)] for v in variants}
    columns = max(len(p) for p in panels.values())
    figure = Figure(figsize=(5.5 * columns, 4.2 * len(variants)))
    for row, variant in enumerate(variants):
        for col, (metric, title) in enumerate(panels[variant]):
            ax = figure.add_subplot(len(variants), columns, row * columns + col + 1)
            for (v, model, dml), by_corr in cells.items():
                xs = [c for c in correlations if metric in by_corr.get(c, {})]
                if v != variant or not xs:
                    continue
                stats = [by_corr[c][metric] for c in xs]
                ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                            capsize=3, linestyle="--" if dml else "-", label=f"{model}{' +DML' if dml else ''}")
            ax.set(xlabel="task correlation p", ylabel=title.split(" (")[0], title=f"{variant}: {title}")
            ax.title.set_fontsize(8)
            ax.legend(fontsize=7)
    figure.tight_layout()
    save_png(figure, path)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    correlations = [float(c) for c in args.correlations.split(",")]
    variants = chosen_names("--variants", args.variants, VARIANTS)
    models = chosen_names("--models", args.models, MODELS)
    budget = Budget(nproc=args.nproc, epochs=args.epochs, max_steps=args.max_steps)
    ledger = Ledger(args.out_dir / "correlation_sweep_runs.jsonl")
    grid = [(variant, correlation, model, dml) for variant in variants for correlation in correlations
            for model in models for dml in ((False,) if args.no_dml else (False, True))]
    specs = {cell: [RunSpec(f"{cell[0]}_p{cell[1]:g}/{cell[2]}", REPO / MODELS[cell[2]], cell[3], seed, OVERRIDES)
                    for seed in range(args.seeds)] for cell in grid}
    failures: list[str] = []
    if not args.report_only:
        data = {(v, c): prepare(args, v, c) for v in variants for c in correlations}
        order = [(cell_specs[seed], data[cell[:2]]) for seed in range(args.seeds) for cell, cell_specs in specs.items()]
        failures = run_all(order, args.runs, budget, ledger, args.jobs)
    cells: dict = {}
    run_s = 0.0
    for (variant, correlation, model, dml), cell_specs in specs.items():
        records = records_for(ledger, cell_specs, budget)
        if records:
            run_s += sum(r["wall_s"] for r in records)
            point = cells.setdefault((variant, model, dml), {}).setdefault(correlation, {})
            for metric, _ in METRICS:
                values = [v for v in (task_mean(r["test"], metric) for r in records) if v is not None]
                if values:
                    point[metric] = summarize(values)
    if not cells:
        raise SystemExit(f"no finished run in {ledger.path}")
    wall = time.perf_counter() - started
    command = " ".join(["python", *sys.argv])
    atomic_write_text(args.out_dir / "correlation_sweep.md", markdown(cells, correlations, command, wall, run_s, args.jobs))
    plot(cells, variants, correlations, args.out_dir / "correlation_sweep.png")
    print(f"wrote {args.out_dir / 'correlation_sweep.md'} and correlation_sweep.png; wall time {wall:.0f} s")
    if failures:
        raise SystemExit("failed runs (re-run the same command to retry them):\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
