"""`mtrec metrics`: per-task metrics over existing prediction logs."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="metrics over existing prediction logs (<task>_label, <task>_pred)")
    p.add_argument("--predictions", required=True, help="Parquet glob")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--auc-mode", choices=["bounded", "exact"], default="bounded")
    p.add_argument("--regression-tasks", default="", help="comma-separated tasks that are regression")
    p.add_argument("--weight-column", default="weight")
    p.add_argument("--segment-by", default=None)
    p.add_argument("--user-column", default=None, help="enables GAUC (log grouped by this column)")
    p.add_argument("--baseline-rates", default=None, help="task=rate,... training positive rates for NE")
    p.add_argument("--batch-rows", type=int, default=1 << 20)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.metrics_job import metrics_main

    metrics_main(args)
