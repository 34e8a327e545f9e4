"""`mtrec evaluate`: score a Parquet log with a trained model and report per-task metrics."""
from __future__ import annotations

import argparse

from pipeline.cli.options import add_overrides, examples_epilog, output_dir

EPILOG = examples_epilog(
    "mtrec evaluate --checkpoint runs/adatt --data runs/data/census/test --out runs/adatt/report_test",
    "mtrec evaluate --checkpoint runs/adatt --which latest --data runs/data/census/valid --out runs/adatt/report_valid "
    "eval.batch_size=4096",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="stream a Parquet log through a trained model and report metrics",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, type=output_dir, help="report directory: report.md, report.json, plots/")
    p.add_argument("--write-predictions", action="store_true",
                   help="also write every row's predictions to OUT/predictions/ (Parquet, one file per rank)")
    p.add_argument("--auc-mode", choices=["bounded", "exact"], default="bounded",
                   help="AUC from a histogram with a certified error bound (bounded, constant memory) "
                        "or from sorted scores (exact)")
    add_overrides(p)
    p.set_defaults(func=run)


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint / --which / --config / --data: the model to load and the data it reads (evaluate, diagnose)."""
    p.add_argument("--checkpoint", required=True,
                   help="a run directory (its best checkpoint, else its latest), RUN/checkpoints/latest, "
                        "or one checkpoint directory")
    p.add_argument("--which", choices=["best", "latest"], default="best",
                   help="with a run directory: the best checkpoint by validation (default) or the latest")
    p.add_argument("--config", default=None,
                   help="job YAML; default: the one stored with the checkpoint. A config whose model differs "
                        "from the checkpoint's is refused")
    p.add_argument("--data", required=True, help="Parquet glob or a dataset split directory")
    p.add_argument("--different-encoding", action="store_true",
                   help="score a dataset whose encoding (vocabularies, normalisation) differs from the training "
                        "data's; refused without it (docs/DATA.md)")


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.evaluate import evaluate_main
    from pipeline.eval.report import render_markdown

    report = evaluate_main(args)
    if report is not None:  # rank 0
        print(scored_line(report))
        print(render_markdown(report), end="")
        print(written_line(args.out))


def written_line(out: str) -> str:
    """Where the report and its plots are, by path (a terminal shows no Markdown images)."""
    from pipeline.eval.report import REPORT_MD, load_report

    plots = [f"{out}/{name}" for files in load_report(out).get("plots", {}).values() for name in files.values()]
    return f"report: {out}/{REPORT_MD}" + (f"; plots: {' '.join(plots)}" if plots else "")


def scored_line(report: dict) -> str:
    """Which model a report scored: checkpoint, step and the validation metric it was kept for."""
    watched = report.get("validation_metric") or {}
    why = (f", best validation {watched['task']} {watched['metric']} {watched['value']:.6f}"
           if report.get("best") and watched.get("value") is not None else "")
    return (f"scored {report['checkpoint']} (step {report['step']}{why}; trained on {report['trained_world_size']} "
            f"rank(s), scored on {report['world_size']}) over {report['rows']:,} rows")
