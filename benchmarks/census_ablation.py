"""Census-Income ablation: which recipe factor keeps AdaTT-sp (configs/census_adatt.yaml, mutual
learning off) below simple peers, chosen on VALIDATION only; then the shipped recipe on test
(docs/RESULTS.md "Ablation: closing the gap to simple peers"). Not a test.

    .venv/bin/python benchmarks/census_ablation.py --seeds 3                    # the ablation rows
    .venv/bin/python benchmarks/census_ablation.py --seeds 5 --rows recipe_table_wise,shipped  # the recipes, test
    .venv/bin/python benchmarks/census_ablation.py --seeds 1 --rows baseline --max-steps 20 \\
        --runs /tmp/ca --ledger /tmp/ca/runs.jsonl --out /tmp/ca/ablation.md       # a smoke run

Every row is census_adatt.yaml on a `mtrec prepare census` dataset (default edu_def associates_plus)
with `key=value` overrides, trained and evaluated through benchmarks/_runs.py (its ledger:
docs/results/census_ablation_runs.jsonl, resumable; `--report-only` rebuilds the table from it).
The ablation rows (all but the FINAL recipes, which run as configured) train 10 epochs (15_epochs:
15) without stopping and record every epoch's validation (`valid_curve`), so the early-stopping
rules are compared on the same runs: a rule's result is the validation at the step it would have
selected (exact: with a constant LR the first e epochs of a long run are an e-epoch run). A row's definition must not change once it has
runs in the ledger (the script refuses); add a row under a new name instead.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from _runs import (REPO, Budget, Ledger, RunSpec, chosen_names, fmt_mean_std, prepare_dataset, summarize,
                   records_for, run_all, task_mean)
from pipeline.config import EarlyStoppingConfig
from pipeline.runtime.atomic import atomic_write_text

TASKS = ("income", "never_married", "education")
# The peers measured on this machine on the same split and tasks (test AUC; docs/RESULTS.md).
PEERS = {
    "plain-PyTorch AdaTT-sp script": {"income": 0.9471, "never_married": 0.9947, "education": 0.8951, "mean": 0.9456},
    "torch-rechub 0.9.0 MMoE": {"income": 0.9470, "never_married": 0.9947, "education": 0.8939, "mean": 0.9452},
}
# Ablation rows: the whole 10-epoch (CURVE15: 15) validation curve, and test at the best mean validation.
CURVE = ("train.epochs=10", "train.early_stopping.task=mean", "train.early_stopping.patience=10",
         "train.keep_last_checkpoints=11")
CURVE15 = ("train.epochs=15", "train.early_stopping.task=mean", "train.early_stopping.patience=15",
           "train.keep_last_checkpoints=16")
EMB_ADAM = "sharding.default.sharding_types=[data_parallel]"  # tables trained by the dense Adam 1e-3
TABLE_WISE = "sharding.default.sharding_types=[table_wise]"  # fused row-wise Adagrad (train.sparse_optimizer)
SHIPPED = "configs/census_adatt.yaml"


@dataclass(frozen=True)
class Row:
    """One ablation row: `factor` says what differs from row `versus` (the Δ column's reference)."""

    factor: str
    preprocess: Optional[str] = "mtrec"  # `mtrec prepare census --preprocess`; None = its default
    overrides: tuple[str, ...] = CURVE
    versus: str = "baseline"
    # The factor rows start from the recipe as it was before the study (pinned in this file, so that
    # a row keeps measuring what its ledger lines did when the shipped recipe changes).
    config: str = "benchmarks/configs/census_adatt_before_ablation.yaml"


def _on_log1p(factor: str, *overrides: str, curve: tuple[str, ...] = CURVE) -> Row:
    """A second-stage row: one more factor on top of the log1p_zscore features."""
    return Row(f"log1p_zscore + {factor}", "log1p_zscore", (*curve, *overrides), versus="log1p_zscore")


ROWS = {
    "baseline": Row("census_adatt.yaml as shipped before this study (min-max features, row-wise Adagrad 0.05)"),
    "log1p_zscore": Row("features: log1p (money columns) + z-score", "log1p_zscore"),
    "emb_adam": Row("embeddings: Adam 1e-3 (data_parallel tables, the dense optimiser)", overrides=(*CURVE, EMB_ADAM)),
    "log1p_zscore+emb_adam": _on_log1p("embeddings: Adam 1e-3", EMB_ADAM),
    "log1p_zscore+sparse_lr_0.1": _on_log1p("row-wise Adagrad lr 0.1", "train.sparse_optimizer.lr=0.1"),
    "log1p_zscore+sparse_lr_0.02": _on_log1p("row-wise Adagrad lr 0.02", "train.sparse_optimizer.lr=0.02"),
    "log1p_zscore+cosine": _on_log1p("cosine LR decay to 0 over the 10 epochs", "train.lr_schedule.name=cosine"),
    "log1p_zscore+15_epochs": _on_log1p("15 epochs (the rules replayed up to 15)", curve=CURVE15),
    "log1p_zscore+emb_dim_16": _on_log1p("embedding dim 16", "model.embedding.dim=16"),
    "log1p_zscore+emb_init_default": _on_log1p("embedding init TorchRec default U(±sqrt(1/n))",
                                               "model.embedding.init=default", "model.embedding.scale=null"),
    "log1p_zscore+batch_512": _on_log1p("batch 512", "train.batch_size=512"),
    "log1p_zscore+weight_decay_1e-5": _on_log1p("dense weight decay 1e-5", "train.dense_optimizer.weight_decay=1e-5"),
    "log1p_zscore+edu_weight_2": _on_log1p("loss weight 2 on education", "model.loss.task_weights.education=2"),
    # The configs as shipped after this study (15 epochs, stop on mean, data-parallel tables), on the
    # `mtrec prepare census` default dataset; and the same with the recipe's table-wise tables before.
    "recipe_table_wise": Row("the shipped recipe with table-wise tables (fused row-wise Adagrad 0.05)", None,
                             (TABLE_WISE,), config=SHIPPED),
    "shipped": Row("the shipped census_adatt.yaml and `mtrec prepare census` defaults", None, (), config=SHIPPED),
}
FINAL = ("recipe_table_wise", "shipped")  # recipes as configured (their own early stopping), also on test
ABLATION = tuple(name for name in ROWS if name not in FINAL)
FIRST = ("baseline", "log1p_zscore", "emb_adam")  # the likely big factors: run first (the default --rows)


@dataclass(frozen=True)
class Rule:
    """A model-selection rule replayed on a validation curve: validate each epoch, at most
    `max_epochs`; stop after `patience` validations without improvement of `watch` (a task, "mean",
    or None = no stopping, the last validation); the result is the best validation seen."""

    label: str
    max_epochs: int
    watch: Optional[str]
    patience: int = 2


RULES = (
    Rule("≤ 8 epochs, stop on education (before)", 8, "education"),
    Rule("≤ 10 epochs, stop on education", 10, "education"),
    Rule("≤ 10 epochs, stop on mean", 10, "mean"),
    Rule("10 epochs, best mean", 10, "mean", patience=10),
    Rule("10 epochs, last", 10, None),
    Rule("≤ 15 epochs, stop on mean", 15, "mean"),
    Rule("15 epochs, best mean", 15, "mean", patience=15),
)
REFERENCE = RULES[2]  # the factors are compared under it, up to each row's epochs (exact for every row)


def select(curve: Sequence[dict[str, Any]], rule: Rule) -> Optional[tuple[int, dict[str, dict[str, Any]]]]:
    """(epochs trained, the validation {task: metrics} the rule selects) of one run's curve, None when
    the curve ends before the rule would; mirrors the trainer's early stopping
    (pipeline/train/trainer.py) with EarlyStoppingConfig.score."""
    points = curve[:rule.max_epochs]
    if rule.watch is None:
        return (len(points), points[-1]["tasks"]) if len(points) == rule.max_epochs else None
    es = EarlyStoppingConfig(task=rule.watch, metric="auc", patience=rule.patience)
    best, best_score, bad = None, None, 0
    for epoch, point in enumerate(points, 1):
        score = es.score(point["tasks"])
        if best_score is None or (score is not None and score > best_score):
            best, best_score, bad = point, score, 0
        else:
            bad += 1
            if bad >= rule.patience:
                return epoch, best["tasks"]
    return (len(points), best["tasks"]) if len(points) == rule.max_epochs else None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row")
    p.add_argument("--rows", default=",".join(FIRST), help=f"comma-separated rows to run, of: {', '.join(ROWS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each with cores // jobs threads)")
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps per run (smoke runs)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "results" / "census_ablation", help="run directories")
    p.add_argument("--ledger", type=Path, default=REPO / "docs" / "results" / "census_ablation_runs.jsonl")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "census_ablation.md",
                   help="the tables (every row found in the ledger, not only --rows)")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables from the ledger")
    return p.parse_args()


def specs_of(name: str, seeds: int) -> list[RunSpec]:
    row = ROWS[name]
    return [RunSpec(name, REPO / row.config, False, seed, row.overrides) for seed in range(seeds)]


def check_definitions(ledger: Ledger, names: Sequence[str], seeds: int, budget: Budget) -> None:
    """A ledger record made with another config or other overrides than its row's today is an error
    (rename the row). Records from before configs were recorded ran the row's config as pinned now."""
    for name in names:
        row = ROWS[name]
        for record in records_for(ledger, specs_of(name, seeds), budget):
            if tuple(record["overrides"]) != row.overrides or record.get("config", row.config) != row.config:
                raise SystemExit(f"{ledger.path}: {record['key']} was run with {record.get('config', row.config)} "
                                 f"and overrides {record['overrides']}, row {name!r} now has {row.config} and "
                                 f"{list(row.overrides)}: give the new definition a new row name")


def dataset(name: str, runs: Path) -> tuple[Path, list[str]]:
    preprocess = ROWS[name].preprocess
    args = ["census"] + (["--preprocess", preprocess] if preprocess is not None else [])
    return runs / "data" / f"census_{preprocess or 'default'}", args


def fmt_row(values: Sequence[float]) -> str:
    return fmt_mean_std(summarize(values))


def welch_p(a: Sequence[float], b: Sequence[float]) -> str:
    from scipy.stats import ttest_ind

    return f"{ttest_ind(a, b, equal_var=False).pvalue:.2g}" if len(a) > 1 and len(b) > 1 else "—"


def ablation_lines(records: dict[str, list[dict]]) -> list[str]:
    """Table 1: each row under the rule it is compared with; Table 2: every rule on every row;
    Table 3: mean validation AUC by epoch."""
    rows = [n for n in ABLATION if records.get(n)]
    if not rows:
        return []
    def chosen(name: str) -> list[dict[str, dict[str, Any]]]:
        return [select(r["valid_curve"], replace(REFERENCE, max_epochs=len(r["valid_curve"])))[1] for r in records[name]]

    means = {n: [task_mean(c) for c in chosen(n)] for n in rows}
    lines = ["", f"### Validation AUC per factor (rule: stop on mean, patience {REFERENCE.patience}, at most the row's "
             "epochs; mean ± std over seeds; Δ and Welch p vs the row named in `vs`)", "",
             "| row | factor | seeds | income | never married | education | mean of tasks | vs | Δ mean | p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in rows:
        cells = " | ".join(fmt_row([c[t]["auc"] for c in chosen(name)]) for t in TASKS)
        versus = ROWS[name].versus if name != "baseline" and means.get(ROWS[name].versus) else None
        delta, p = ((f"{statistics.fmean(means[name]) - statistics.fmean(means[versus]):+.4f}",
                     welch_p(means[name], means[versus])) if versus else ("—", "—"))
        lines.append(f"| {name} | {ROWS[name].factor} | {len(means[name])} | {cells} | {fmt_row(means[name])} | "
                     f"{versus or '—'} | {delta} | {p} |")
    lines += ["", "### Selection rules replayed on the same runs (mean of tasks validation AUC, mean ± std; "
              "[mean epochs trained])", "", "| row | " + " | ".join(r.label for r in RULES) + " |",
              "|---|" + "---|" * len(RULES)]
    for name in rows:
        cells = []
        for rule in RULES:
            picks = [select(r["valid_curve"], rule) for r in records[name]]
            if None in picks:
                cells.append("n/a")
                continue
            epochs = statistics.fmean(e for e, _ in picks)
            cells.append(f"{fmt_row([task_mean(t) for _, t in picks])} [{epochs:.1f}]")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    epochs = max(len(r["valid_curve"]) for name in rows for r in records[name])
    lines += ["", "### Mean of tasks validation AUC by epoch (mean over seeds)", "",
              "| row | " + " | ".join(str(e) for e in range(1, epochs + 1)) + " |", "|---|" + "---|" * epochs]
    for name in rows:
        by_epoch = [[task_mean(r["valid_curve"][e]["tasks"]) for r in records[name] if len(r["valid_curve"]) > e]
                    for e in range(epochs)]
        lines.append(f"| {name} | " + " | ".join(f"{statistics.fmean(v):.4f}" if v else "" for v in by_epoch) + " |")
    return lines


def test_lines(name: str, records: list[dict]) -> list[str]:
    """A FINAL row on test: mean ± std per task, and a one-sample t-test against each peer."""
    from scipy.stats import ttest_1samp

    values = {t: [r["test"][t]["auc"] for r in records] for t in TASKS}
    values["mean"] = [task_mean(r["test"]) for r in records]
    valid = [fmt_row([r["valid"][t]["auc"] for r in records]) for t in TASKS]
    calibration = [r["test"]["income"]["calibration"] for r in records]
    lines = ["", f"### `{name}` on TEST: {ROWS[name].factor} ({len(records)} seeds; evaluated at the best "
             "validation step)", "", "| | income | never married | education | mean of tasks |", "|---|---|---|---|---|",
             f"| {name}, validation (the evaluated step) | " + " | ".join(valid) + " | "
             + fmt_row([task_mean(r["valid"]) for r in records]) + " |",
             f"| {name}, **test** | " + " | ".join(fmt_row(values[k]) for k in (*TASKS, "mean")) + " |"]
    for peer, figures in PEERS.items():
        lines.append(f"| {peer} | " + " | ".join(f"{figures[k]:.4f}" for k in (*TASKS, "mean")) + " |")
    if len(records) > 1:
        for peer, figures in PEERS.items():
            cells = []
            for k in (*TASKS, "mean"):
                diff = statistics.fmean(values[k]) - figures[k]
                p = ttest_1samp(values[k], figures[k]).pvalue
                cells.append(f"{diff:+.4f} (p = {p:.2g})")
            lines.append(f"| Δ vs {peer} (one-sample t-test, two-sided) | " + " | ".join(cells) + " |")
    lines += ["", f"Income calibration (test): {fmt_row(calibration)}; epochs trained (seeds 0..): "
              f"{', '.join(str(len(r['valid_curve'])) for r in records)}; evaluated epoch: "
              f"{', '.join(str(1 + [p['step'] for p in r['valid_curve']].index(r['best_step'])) for r in records)}."]
    return lines


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    names = chosen_names("--rows", args.rows, ROWS)
    budget = Budget(max_steps=args.max_steps)
    ledger = Ledger(args.ledger)
    check_definitions(ledger, list(ROWS), max(args.seeds, 10), budget)
    failures: list[str] = []
    if not args.report_only:
        data = {}
        for name in names:
            path, prepare = dataset(name, args.runs)
            data[name] = prepare_dataset(prepare, path, args.runs / "prepare.log")
        # seed-major: an interrupted invocation leaves every row with about as many seeds
        order = [(specs_of(name, args.seeds)[seed], data[name]) for seed in range(args.seeds) for name in names]
        failures = run_all(order, args.runs, budget, ledger, args.jobs)
    # every row the ledger has (seeds 0..9 at most), so one invocation's table never hides another's rows
    records = {name: records_for(ledger, specs_of(name, 10), budget) for name in ROWS}
    lines = ["<!-- written by benchmarks/census_ablation.py; do not edit -->",
             f"Command (last): `{' '.join(['python', *sys.argv])}`; census_adatt.yaml, DML off, 1 process, "
             f"`mtrec prepare census` (edu_def associates_plus); validation = the 49,881-row valid split. "
             f"Wall time of this invocation: {time.perf_counter() - started:.0f} s; sum of the listed runs' own "
             f"wall times: {sum(r['wall_s'] for rs in records.values() for r in rs):.0f} s.",
             "", "Rows (each: its config, the `mtrec prepare census` option, its overrides; the ablation rows "
             f"start from `{Row.config}`, the census recipe before the study, and add `{' '.join(CURVE)}`):", ""]
    lines += [f"- `{n}`: {ROWS[n].factor}; `--preprocess {ROWS[n].preprocess or '(default)'}`"
              + (f" on `{ROWS[n].config}`" if ROWS[n].config != Row.config else "")
              + "".join(f" `{o}`" for o in ROWS[n].overrides if o not in CURVE) for n in ROWS if records[n]]
    lines += ablation_lines(records)
    for name in FINAL:
        if records[name]:
            lines += test_lines(name, records[name])
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if failures:
        raise SystemExit("failed runs (re-run the same command to retry them):\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
