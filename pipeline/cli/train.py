"""`mtrec train`: train a model on any world size (plain process = 1 rank)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (any world size under torchrun; plain process = 1)")
    p.add_argument("--config", required=True, help="job YAML (configs/*.yaml)")
    p.add_argument("--data", required=True, help="dataset directory written by `mtrec prepare`")
    p.add_argument("--out", required=True, help="run directory: checkpoints, plan, logs, resolved config")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint (automatic when --out has one)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if --out has checkpoints")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=0.002")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.eval.report import render_markdown
    from pipeline.train.trainer import train_main

    summary = train_main(args)
    if summary is not None:  # rank 0
        print(f"trained {summary['steps']} steps on {summary['world_size']} rank(s)"
              f"{' (stopped early)' if summary['stopped_early'] else ''}; validation:")
        print(render_markdown(summary["validation"]))
