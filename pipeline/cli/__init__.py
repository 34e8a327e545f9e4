"""The `mtrec` command line (also `python -m pipeline`, which is what torchrun and TorchX run).

Each sub-command parses its arguments here and hands them to one function in the module that owns
the work; heavy imports happen only inside the chosen command.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from pipeline.cli import compare, diagnose, evaluate, metrics, prepare, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (prepare, train, evaluate, metrics, compare, diagnose):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # Our own progress at INFO; torch/TorchRec/fbgemm only from WARNING (fbgemm logs every table
        # batch's arguments on the root logger at INFO). Their per-rank warnings about their own
        # internals (ShardedTensor deprecation, DDP on sharded modules, ...) are hidden too: -v shows all.
        for name in ("pipeline", "models"):
            logging.getLogger(name).setLevel(logging.INFO)
        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, no traceback wall
        logging.getLogger("mtrec").debug("failed", exc_info=True)
        print(f"mtrec {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
