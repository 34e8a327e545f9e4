"""`mtrec diagnose`: gate / fusion weights per level, with heatmaps."""
from __future__ import annotations

import argparse

from pipeline.cli.evaluate import add_checkpoint_args
from pipeline.cli.options import add_overrides, output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="average gate / fusion weights per level over a split, with heatmaps")
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, type=output_dir, help="output directory: gates.json, gates_level<l>.png")
    p.add_argument("--max-batches", type=int, default=None, help="cap the batches per rank (default: all)")
    add_overrides(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.diagnose import diagnose_main

    report = diagnose_main(args)
    if report is not None:  # rank 0
        print(f"gate weights of {report['backbone']} over {report['rows']} rows ({len(report['levels'])} "
              f"level(s)) written to {args.out}")
