"""Task-correlation sweep (MMoE §3's synthetic study): `mtrec prepare synthetic` at several task
correlations, dense-only and with sparse id features, then shared-bottom vs MMoE vs PLE vs AdaTT
(mutual learning off and on) over several seeds through `mtrec train` / `mtrec evaluate`; writes
test AUC and test log loss (mean over the binary tasks, mean ± std over seeds) against the
correlation as Markdown + PNG. Not a test.

    .venv/bin/python benchmarks/correlation_sweep.py --seeds 3                 # the full sweep
    .venv/bin/python benchmarks/correlation_sweep.py --seeds 1 --rows 20000 --correlations 0.0,1.0 \\
        --models mmoe --no-dml --variants dense --max-steps 10 --runs /tmp/cs --out-dir /tmp/cs/out   # smoke

[project] The models are the census configs' backbones and training recipe (configs/census_*.yaml)
with early stopping on task t1; the generator's binary labels are 1[y_t > median] (MODELS.md §8).
Resumable like census_table.py (benchmarks/_runs.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _runs import REPO, Budget, RunSpec, mean_std, prepare_dataset, save_figure, train_and_evaluate
from pipeline.data.atomic import atomic_write_text

MODELS = {
    "shared_bottom": "configs/census_shared_bottom.yaml",
    "mmoe": "configs/census_mmoe.yaml",
    "ple": "configs/census_ple.yaml",
    "adatt": "configs/census_adatt.yaml",
}
VARIANTS = ("dense", "sparse")
METRICS = (("auc", "test AUC (mean over binary tasks)"), ("logloss", "test log loss (mean over binary tasks)"))
OVERRIDES = ("train.early_stopping.task=t1",)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--correlations", default="0.0,0.5,0.9,1.0")
    p.add_argument("--variants", default=",".join(VARIANTS), help="dense (no id features) and/or sparse")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (the data seed is fixed)")
    p.add_argument("--no-dml", action="store_true", help="only mutual learning off")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--dense-dim", type=int, default=100, help="MMoE §3 uses d = 100")
    p.add_argument("--sparse-features", type=int, default=4, help="id features of the sparse variant")
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "results" / "correlation_sweep")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "results")
    return p.parse_args()


def prepare(args: argparse.Namespace, variant: str, correlation: float) -> Path:
    sparse = args.sparse_features if variant == "sparse" else 0
    out = args.runs / "data" / f"{variant}_p{correlation:g}"
    return prepare_dataset(["synthetic", "--rows", str(args.rows), "--tasks", str(args.tasks), "--correlation",
                            str(correlation), "--dense-dim", str(args.dense_dim), "--sparse-features", str(sparse),
                            "--vocab", str(args.vocab)], out, args.runs / "prepare.log")


def task_mean(report: dict, metric: str) -> float:
    """The mean of `metric` over the tasks that have it (binary tasks for auc / logloss)."""
    return statistics.fmean(t[metric] for t in report["tasks"].values() if t.get(metric) is not None)


def markdown(cells: dict, correlations: list[float], command: str, wall_s: float) -> str:
    """cells: {(variant, model, dml): {correlation: {metric: (mean, std, n)}}}."""
    lines = ["<!-- written by benchmarks/correlation_sweep.py; do not edit -->", f"Command: `{command}`  ",
             f"Wall time of this invocation: {wall_s:.0f} s.", ""]
    for metric, title in METRICS:
        lines += [f"### {title}, mean ± std over seeds", "",
                  "| data | model | DML | " + " | ".join(f"p = {c:g}" for c in correlations) + " |",
                  "|---|---|---|" + "---|" * len(correlations)]
        for (variant, model, dml), by_corr in cells.items():
            values = []
            for c in correlations:
                mean, std, n = by_corr[c][metric]
                values.append(f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f} (1 seed)")
            lines.append(f"| {variant} | {model} | {'on' if dml else 'off'} | {' | '.join(values)} |")
        lines.append("")
    return "\n".join(lines)


def plot(cells: dict, variants: list[str], correlations: list[float], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(METRICS), 4.2 * len(variants)))
    for row, variant in enumerate(variants):
        for col, (metric, title) in enumerate(METRICS):
            ax = figure.add_subplot(len(variants), len(METRICS), row * len(METRICS) + col + 1)
            for (v, model, dml), by_corr in cells.items():
                if v != variant:
                    continue
                stats = [by_corr[c][metric] for c in correlations]
                ax.errorbar(correlations, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                            capsize=3, linestyle="--" if dml else "-", label=f"{model}{' +DML' if dml else ''}")
            ax.set(xlabel="task correlation p", ylabel=title, title=f"{variant} features")
            ax.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    correlations = [float(c) for c in args.correlations.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    models = [m for m in args.models.split(",") if m]
    bad = sorted(set(variants) - set(VARIANTS)) + sorted(set(models) - set(MODELS))
    if bad:
        raise SystemExit(f"unknown variant/model {bad}; variants {VARIANTS}, models {list(MODELS)}")
    budget = Budget(nproc=args.nproc, epochs=args.epochs, max_steps=args.max_steps)
    cells: dict = {}
    for variant in variants:
        for correlation in correlations:
            data = prepare(args, variant, correlation)
            for model in models:
                for dml in (False,) if args.no_dml else (False, True):
                    reports = [train_and_evaluate(RunSpec(f"{variant}_p{correlation:g}/{model}", REPO / MODELS[model],
                                                          dml, seed, OVERRIDES), data, args.runs, budget,
                                                  splits=("test",))["test"]
                               for seed in range(args.seeds)]
                    cells.setdefault((variant, model, dml), {})[correlation] = {
                        metric: (*mean_std([task_mean(r, metric) for r in reports]), len(reports))
                        for metric, _ in METRICS}
            print(f"{variant} p={correlation:g} done, {time.perf_counter() - started:.0f} s so far", flush=True)
    wall = time.perf_counter() - started
    command = " ".join(["python", *sys.argv])
    atomic_write_text(args.out_dir / "correlation_sweep.md", markdown(cells, correlations, command, wall))
    plot(cells, variants, correlations, args.out_dir / "correlation_sweep.png")
    print(f"wrote {args.out_dir / 'correlation_sweep.md'} and correlation_sweep.png; wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
