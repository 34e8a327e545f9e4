"""`mtrec init-config`: write a complete job config for a dataset (pipeline/config_init.py)."""
from __future__ import annotations

import argparse

from pipeline.cli.options import examples_epilog, output_file
from pipeline.config_init import MODELS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-config", help="write a complete, commented job config for a dataset",
                       epilog=examples_epilog("mtrec init-config --data runs/data/adult --model adatt_sp "
                                              "--out runs/adult.yaml"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset directory (schema.yaml)")
    p.add_argument("--model", required=True, choices=MODELS, help="backbone type of the model")
    p.add_argument("--dml", action="store_true", help="switch on Deep Mutual Learning (CTFM + GKD)")
    p.add_argument("--watch", default=None, metavar="TASK",
                   help="early-stopping task (default: the first binary task)")
    p.add_argument("--out", required=True, type=output_file, help="config YAML to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.config_init import init_config

    print(init_config(args.data, args.model, args.out, dml=args.dml, watch=args.watch))
