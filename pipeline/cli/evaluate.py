"""`mtrec evaluate`: score a Parquet log with a trained model and report per-task metrics."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="stream a Parquet log through a trained model and report metrics")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="run directory or one checkpoint directory")
    p.add_argument("--data", required=True, help="Parquet glob or a dataset split directory")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--write-predictions", action="store_true")
    p.add_argument("--auc-mode", choices=["bounded", "exact"], default="bounded")
    p.add_argument("--segment-by", default=None, help="column for a per-segment breakdown")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.evaluate import evaluate_main
    from pipeline.eval.report import render_markdown

    report = evaluate_main(args)
    if report is not None:  # rank 0
        print(render_markdown(report))
