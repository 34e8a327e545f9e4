"""`mtrec compare`: per-task deltas between two reports."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="per-task deltas of report B against report A (NE diff in %%)")
    p.add_argument("report_a", help="report directory (or its report.json) of the baseline")
    p.add_argument("report_b", help="report directory (or its report.json) compared against it")
    p.add_argument("--different-data", action="store_true",
                   help="compare reports whose labels differ (other splits or logs); refused without it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.report import compare_reports

    print(compare_reports(args.report_a, args.report_b, args.different_data))
