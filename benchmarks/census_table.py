"""Census-Income (KDD), the AdaTT paper's Table 5 setting: train + evaluate every model with mutual
learning off and on over several seeds, through `mtrec train` / `mtrec evaluate`, and write the
mean ± std test AUC / NE per task next to the paper's numbers (Markdown + PNG). Not a test.

    .venv/bin/python benchmarks/census_table.py --seeds 10 --no-dml --jobs 2 --no-heatmaps \
        --configs census_t5_adatt_6,...                                              # the table (docs/RESULTS.md)
    .venv/bin/python benchmarks/census_table.py --seeds 1 --configs census_t5_adatt_6 --no-dml --max-steps 20 \
        --runs /tmp/ct --out-dir /tmp/ct/out                                         # a smoke run

Resumable: a (model, dml, seed) in the ledger docs/results/census_runs.jsonl (committed) is never
re-run, a half-trained run resumes; `--report-only` rebuilds the table and plot from the ledger.
Data: `mtrec prepare census --edu-def bachelors_plus` (docs/MATH.md §9.2: the MMoEEx definition the
AdaTT Census experiment adapts; the project default for reproducing Table 5) with the census
recipe's log1p + z-score features; `--preprocess mtrec --epochs 4` is the first recipe's table
(docs/results/census_table_mtrec_bachelors_plus.md). Task mapping
Task 1 = education, Task 2 = income, Task 3 = never_married, inferred (docs/MATH.md §9.3).
The `_tune` variants are the shared-expert splits to choose between on the validation table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _runs import (REPO, Budget, Ledger, RunSpec, aggregate, chosen_names, diagnose_run, fmt_mean_std,
                   prepare_dataset, records_for, run_all)
from pipeline.runtime.atomic import atomic_write_text
from pipeline.eval.plots import save_png

EDU_DEF = "bachelors_plus"
PREPROCESS = "log1p_zscore"  # `mtrec prepare census`'s default, the features of the census recipe
TASKS = ("education", "income", "never_married")  # Task 1, 2, 3 of AdaTT Table 5 (inferred mapping)
# AdaTT Table 5, mean test AUC over 100 runs (docs/MATH.md §9.3), as (Task 1, Task 2, Task 3).
PAPER = {
    "census_t5_mlmmoe_6": (0.8729, 0.9178, 0.9731),
    "census_t5_ple_6": (0.8683, 0.9164, 0.9697),
    "census_t5_adatt_6": (0.8766, 0.9202, 0.9783),
    "census_t5_mlmmoe_9": (0.8688, 0.9139, 0.9730),
    "census_t5_ple_9": (0.8645, 0.9134, 0.9680),
    "census_t5_adatt_9": (0.8744, 0.9174, 0.9786),
}
# model name -> (config file, overrides). Expert splits to tune on validation (the paper tuned m_s):
# PLE 9 = 1 x 3 + 6 shared; AdaTT-general 6 = 1 x 3 + 3 shared, 9 = 2 x 3 + 3 shared.
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{name: (f"configs/{name}.yaml", ()) for name in PAPER},
    "census_shared_bottom": ("configs/census_shared_bottom.yaml", ()),
    "census_mmoe": ("configs/census_mmoe.yaml", ()),
    "census_cross_stitch": ("configs/census_cross_stitch.yaml", ()),
    "census_t5_ple_9_tune_ms6": ("configs/census_t5_ple_9.yaml", (
        "model.backbone.num_task_experts=1", "model.backbone.num_shared_experts=6")),
    "census_t5_adatt_6_tune_general_ms3": ("configs/census_t5_adatt_6.yaml", (
        "model.backbone.type=adatt_general", "model.backbone.num_task_experts=1",
        "model.backbone.num_shared_experts=3")),
    "census_t5_adatt_9_tune_general_ms3": ("configs/census_t5_adatt_9.yaml", (
        "model.backbone.type=adatt_general", "model.backbone.num_task_experts=2",
        "model.backbone.num_shared_experts=3")),
}

UNGATED = ("census_shared_bottom", "census_cross_stitch")
# The shared-expert splits chosen on validation (DML off, the seeds every variant has): family -> variants.
TUNING = {
    "PLE, 9 experts/level": ("census_t5_ple_9", "census_t5_ple_9_tune_ms6"),
    "AdaTT, 6 experts/level": ("census_t5_adatt_6", "census_t5_adatt_6_tune_general_ms3"),
    "AdaTT, 9 experts/level": ("census_t5_adatt_9", "census_t5_adatt_9_tune_general_ms3"),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per (model, dml)")
    p.add_argument("--configs", default=",".join(MODELS), help=f"comma-separated subset of: {', '.join(MODELS)}")
    p.add_argument("--no-dml", action="store_true", help="only mutual learning off")
    p.add_argument("--only-dml", action="store_true", help="only mutual learning on")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when > 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each with cores // jobs threads)")
    p.add_argument("--epochs", type=int, default=None, help="override the configs' epochs (early stopping stays)")
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps per run (smoke runs)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "results" / "census", help="run directories")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "results",
                   help="census_table[_suffix].md, census_auc[_suffix].png, census_runs[_suffix].jsonl (the ledger), gates[_suffix]/<model>/")
    p.add_argument("--no-heatmaps", action="store_true", help="skip `mtrec diagnose` of the gated models")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables from the ledger")
    p.add_argument("--preprocess", default=PREPROCESS, choices=["log1p_zscore", "mtrec", "mmoeex", "mmoeex_aligned"],
                   help="`mtrec prepare census --preprocess`: log1p_zscore (the census recipe's features), mtrec "
                        "(min-max: the first recipe's), or the MMoEEx-MTL one-hot features (the investigation of "
                        "docs/RESULTS.md); outputs other than the defaults' get a _<preprocess>_<edu-def> suffix")
    p.add_argument("--edu-def", default=EDU_DEF, choices=["associates_plus", "bachelors_plus", "mmoeex_as_coded"])
    return p.parse_args()


def label(model: str, dml: bool) -> str:
    return f"{model.removeprefix('census_')}{' +DML' if dml else ''}"


def tuning_lines(ledger: Ledger, budget: Budget) -> list[str]:
    """Validation AUC of each expert-split variant over the seeds all variants of a family have."""
    lines = ["", "### Shared-expert splits chosen on validation (DML off; mean validation AUC, seeds common "
             "to the variants)", "", "| family | variant | seeds | Task 1 edu | Task 2 income | Task 3 marital "
             "| mean of tasks |", "|---|---|---|---|---|---|---|"]
    for family, variants in TUNING.items():
        by_variant = {v: ledger.finished(v, False, budget) for v in variants}
        common = sorted(set.intersection(*(set(seeds) for seeds in by_variant.values())))
        if not common:
            continue
        scores = {}
        for variant in variants:
            agg = aggregate([by_variant[variant][s]["valid"] for s in common], metrics=("auc",))
            scores[variant] = sum(agg[t]["auc"][0] for t in TASKS) / len(TASKS)
            cells = " | ".join(fmt_mean_std(agg[t]["auc"]) for t in TASKS)
            lines.append(f"| {family} | {variant} | {len(common)} | {cells} | {scores[variant]:.4f} |")
        lines.append(f"| {family} | **chosen: {max(scores, key=scores.get)}** | | | | | |")
    return lines


# (claim, model A, model B, DML of A, DML of B): test AUC of A minus B per task.
COMPARISONS = (
    *((f"AdaTT vs {other}, {n} experts/level", f"census_t5_adatt_{n}", f"census_t5_{key}_{n}", False, False)
      for n in (6, 9) for key, other in (("ple", "PLE"), ("mlmmoe", "ML-MMoE"))),
    *((f"ML-MMoE vs PLE, {n} experts/level", f"census_t5_mlmmoe_{n}", f"census_t5_ple_{n}", False, False)
      for n in (6, 9)),  # Table 5 ranks ML-MMoE above PLE
    *((f"AdaTT (6 experts/level) vs {other}", "census_t5_adatt_6", f"census_{key}", False, False)
      for key, other in (("mmoe", "MMoE"), ("shared_bottom", "shared-bottom"), ("cross_stitch", "cross-stitch"))),
    *((f"{label(m, False)}: DML on vs off", m, m, True, False) for m in MODELS if m in PAPER or m in UNGATED
      or m == "census_mmoe"),
)


def comparison_lines(cells: dict, ledger: Ledger, budget: Budget) -> list[str]:
    """Per comparison and task: mean test-AUC difference and Welch's t-test p-value over seeds."""
    from scipy.stats import ttest_ind

    lines = ["", "### Differences (test AUC of A minus B, mean over seeds; Welch's t-test p-value)", "",
             "| comparison | seeds A / B | Task 1 edu | Task 2 income | Task 3 marital |", "|---|---|---|---|---|"]
    for claim, a, b, dml_a, dml_b in COMPARISONS:
        if (a, dml_a) not in cells or (b, dml_b) not in cells:
            continue
        ra, rb = (records_for(ledger, cells[k], budget) for k in ((a, dml_a), (b, dml_b)))
        if len(ra) < 2 or len(rb) < 2:
            continue
        row = []
        for task in TASKS:
            xa, xb = ([r["test"][task]["auc"] for r in rs] for rs in (ra, rb))
            p = ttest_ind(xa, xb, equal_var=False).pvalue
            row.append(f"{np.mean(xa) - np.mean(xb):+.4f} (p = {p:.2g})")
        lines.append(f"| {claim} | {len(ra)} / {len(rb)} | {' | '.join(row)} |")
    return lines


def configured_epochs() -> int:
    """The epochs of the census recipe every census config extends."""
    from pipeline.config import load_job_config

    return load_job_config(REPO / "configs" / "recipes" / "census.yaml").train.epochs


def markdown(results: dict, args: argparse.Namespace, command: str, wall_s: float, run_s: float,
             extra: list[str], heatmaps: list[str]) -> str:
    """results: {(model, dml): {"test": aggregate, "valid": aggregate}}; heatmaps: PNG paths
    relative to the Markdown file."""
    lines = ["<!-- written by benchmarks/census_table.py; do not edit -->",
             f"Command: `{command}`  ", f"features: `{args.preprocess}`; edu_def: `{args.edu_def}`; Task 1 = education, Task 2 = income, "
             f"Task 3 = never_married (inferred, docs/MATH.md §9.3); seeds requested: {args.seeds}; epochs: "
             f"{args.epochs or f'as configured ({configured_epochs()}, early stopping on the mean validation AUC)'}; wall time of this invocation: {wall_s:.0f} s (runs found in the "
             f"ledger are not re-run); sum of the listed runs' own wall times: {run_s:.0f} s, {args.jobs} at a time.", "",
             "### Test AUC (mean ± std over seeds; paper = AdaTT Table 5, mean of 100 runs)", "",
             "| model | DML | seeds | Task 1 edu | Task 2 income | Task 3 marital | paper T1 / T2 / T3 |",
             "|---|---|---|---|---|---|---|"]
    for (model, dml), agg in results.items():
        cells = [fmt_mean_std(agg["test"].get(t, {}).get("auc")) for t in TASKS]
        n = agg["test"][TASKS[0]]["auc"][2]
        paper = " / ".join(f"{v:.4f}" for v in PAPER[model]) if model in PAPER and not dml else "—"
        lines.append(f"| {model} | {'on' if dml else 'off'} | {n} | {' | '.join(cells)} | {paper} |")
    for split, metric, title in (("test", "ne", "Test NE (lower is better)"),
                                 ("valid", "auc", "Validation AUC (at the evaluated checkpoint)")):
        lines += ["", f"### {title}", "", "| model | DML | Task 1 edu | Task 2 income | Task 3 marital |",
                  "|---|---|---|---|---|"]
        for (model, dml), agg in results.items():
            cells = [fmt_mean_std(agg[split].get(t, {}).get(metric)) for t in TASKS]
            lines.append(f"| {model} | {'on' if dml else 'off'} | {' | '.join(cells)} |")
    lines += extra
    if heatmaps:
        lines += ["", "### Gate heatmaps (seed 0, DML off, validation split; `mtrec diagnose`)", "",
                  *(f"![{path}]({path})" for path in heatmaps)]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
    """Per task: test AUC mean ± std by (model, dml), the paper's value as a black tick."""
    from matplotlib.figure import Figure

    keys = list(results)
    figure = Figure(figsize=(max(8.0, 0.6 * len(keys) * len(TASKS)), 5.5))
    for i, task in enumerate(TASKS):
        ax = figure.add_subplot(1, len(TASKS), i + 1)
        cells = [results[k]["test"][task]["auc"] for k in keys]
        x = np.arange(len(keys))
        ax.bar(x, [c[0] for c in cells], yerr=[c[1] for c in cells], capsize=3,
               color=["tab:orange" if dml else "tab:blue" for _, dml in keys])
        for j, (model, dml) in enumerate(keys):
            if model in PAPER and not dml:
                ax.plot([j - 0.4, j + 0.4], [PAPER[model][i]] * 2, color="black")
        low = min(min(c[0] - c[1] for c in cells), min((p[i] for p in PAPER.values()), default=1.0))
        ax.set_ylim(low - 0.01, 1.0)
        ax.set_xticks(x, [label(m, d) for m, d in keys], rotation=60, ha="right", fontsize=7)
        ax.set(title=f"Task {i + 1}: {task}", ylabel="test AUC" if i == 0 else None)
    figure.suptitle("Census-Income: test AUC ± std over seeds (black: AdaTT Table 5; orange: DML on)")
    figure.tight_layout()
    save_png(figure, path)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    names = chosen_names("--configs", args.configs, MODELS)
    dml_modes = [d for d in (False, True) if not (d and args.no_dml) and not (not d and args.only_dml)]
    budget = Budget(nproc=args.nproc, epochs=args.epochs, max_steps=args.max_steps)
    tag = f"{args.preprocess}_{args.edu_def}"  # names the dataset and the run directories
    suffix = "" if (args.preprocess, args.edu_def) == (PREPROCESS, EDU_DEF) else f"_{tag}"  # names the outputs
    ledger = Ledger(args.out_dir / f"census_runs{suffix}.jsonl")
    cells = {(name, dml): [RunSpec(name, REPO / MODELS[name][0], dml, seed, MODELS[name][1])
                           for seed in range(args.seeds)] for name in names for dml in dml_modes}
    data, root = args.runs / "data" / f"census_{tag}", args.runs / tag
    failures: list[str] = []
    if not args.report_only:
        prepare = ["census", "--edu-def", args.edu_def, "--preprocess", args.preprocess]  # its ledgers' features
        prepare_dataset(prepare, data, args.runs / "prepare.log")
        # seed-major order: an interrupted invocation leaves every cell with about as many seeds
        order = [(specs[seed], data) for seed in range(args.seeds) for specs in cells.values()]
        failures = run_all(order, root, budget, ledger, args.jobs)
        for (name, dml), specs in cells.items():
            if not dml and not args.no_heatmaps and name not in UNGATED:  # the Figure 3 analogue
                diagnose_run(specs[0], data / "valid", root, args.out_dir / f"gates{suffix}" / name, budget)
    results, run_s = {}, 0.0
    for key, specs in cells.items():
        records = records_for(ledger, specs, budget)
        if records:
            results[key] = {split: aggregate([r[split] for r in records]) for split in ("valid", "test")}
            run_s += sum(r["wall_s"] for r in records)
    if not results:
        raise SystemExit(f"no finished run of {names} in {ledger.path}")
    wall = time.perf_counter() - started
    command = " ".join(["python", *sys.argv])
    heatmaps = sorted(str(p.relative_to(args.out_dir)) for name in names for p in
                      (args.out_dir / f"gates{suffix}" / name).glob("gates_level*.png"))
    table = args.out_dir / f"census_table{suffix}.md"
    extra = comparison_lines(cells, ledger, budget) + tuning_lines(ledger, budget)
    atomic_write_text(table, markdown(results, args, command, wall, run_s, extra, heatmaps))
    bar_chart(results, args.out_dir / f"census_auc{suffix}.png")
    print(f"wrote {table} and census_auc{suffix}.png; wall time {wall:.0f} s")
    if failures:
        raise SystemExit("failed runs (re-run the same command to retry them):\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
