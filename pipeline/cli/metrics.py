"""`mtrec metrics`: per-task metrics over existing prediction logs."""
from __future__ import annotations

import argparse

from pipeline.cli.options import output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="metrics over existing prediction logs (<task>_label, <task>_pred)")
    p.add_argument("--predictions", required=True, help="Parquet glob")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--out", required=True, type=output_dir, help="report directory")
    p.add_argument("--auc-mode", choices=["bounded", "exact"], default="bounded",
                   help="AUC from a histogram with a certified error bound (bounded, constant memory) "
                        "or from sorted scores (exact)")
    p.add_argument("--regression-tasks", default="", help="comma-separated tasks that are regression")
    p.add_argument("--weight-column", default=None,
                   help="row weight column (must exist); default: 'weight' when the files have it, else weight 1")
    p.add_argument("--segment-by", default=None, help="column for a per-segment breakdown (must exist)")
    p.add_argument("--user-column", default=None, help="enables GAUC (log grouped by this column)")
    p.add_argument("--baseline-rates", default=None, help="task=rate,... training positive rates for NE")
    p.add_argument("--batch-rows", type=int, default=1 << 20, help="rows read per batch (bounds the memory)")
    p.add_argument("--no-plots", action="store_true", help="skip the ROC and reliability plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.metrics_job import metrics_main

    metrics_main(args)
