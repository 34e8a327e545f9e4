"""The `mtrec` command line (also `python -m pipeline`, which is what torchrun and TorchX run).

Each sub-command parses its arguments here and hands them to one function in the module that owns
the work; heavy imports (torch) happen only inside the chosen command, after its config has been
validated. `key=value` config overrides may stand anywhere after the sub-command. A user error (a
bad config, override, dataset or output path) is one line on stderr and exit status 2 on every
rank, never a traceback; Ctrl-C is one line and exit status 130.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from pipeline.cli import compare, diagnose, evaluate, init_config, metrics, prepare, train
from pipeline.cli.logs import setup_logging
from pipeline.cli.options import examples_epilog, is_override

log = logging.getLogger("mtrec")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

EPILOG = examples_epilog(
    "mtrec prepare census --out runs/data/census",
    "mtrec train --config configs/census_adatt.yaml --data runs/data/census --out runs/adatt",
    "mtrec evaluate --checkpoint runs/adatt --data runs/data/census/test --out runs/adatt/report_test",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtrec", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="DEBUG logging from every library on the console (RUN/train.log always has it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="`mtrec COMMAND --help` for its options")
    for command in (prepare, init_config, train, evaluate, metrics, compare, diagnose):
        command.add_parser(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; `key=value` tokens anywhere after the sub-command are config overrides
    (of the commands that read a config; elsewhere they are unrecognized arguments)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *(token for token in extra if is_override(token))]
        extra = [token for token in extra if not is_override(token)]
        extra += [token for token in args.overrides if not is_override(token)]
    if extra:
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (nested) sub-command parser that `args` came from, for its usage line in errors."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return parser
        parser = subs[0].choices[getattr(args, subs[0].dest)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose, int(os.environ.get("RANK", "0")))
    try:
        args.func(args)
    except KeyboardInterrupt as e:  # the trainer says at which step and what a rerun resumes from
        _exit(args, str(e) or "interrupted", EXIT_INTERRUPTED)
    except (ValueError, OSError) as e:  # bad input: a clear message, no traceback wall
        log.debug("failed", exc_info=True)
        _exit(args, f"error: {e}", EXIT_USER_ERROR)
    except RuntimeError as e:
        if not _peer_lost(e):
            raise
        # Another rank died (e.g. of a user error, its one line is above and in torchrun's summary);
        # this rank's collective broke. Its traceback says nothing more: RUN/train.log has it.
        log.debug("a peer rank failed", exc_info=True)
        _exit(args, "stopped: another rank failed first (see its message)", 1, record=False)


def _peer_lost(error: RuntimeError) -> bool:
    """A collective failed because a peer process went away (gloo's and NCCL's wording)."""
    lost = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(text in str(error) for text in lost)


def _exit(args: argparse.Namespace, message: str, status: int, record: bool = True) -> None:
    line = f"mtrec {args.command}: {message}"
    print(line, file=sys.stderr)
    if record:
        _record_for_torchelastic(line)
    raise SystemExit(status) from None


def _record_for_torchelastic(message: str) -> None:
    """Under torchrun, put the one-line message into the error file torchrun reads (the
    TORCHELASTIC_ERROR_FILE of torch.distributed.elastic's @record), so its failure summary shows
    this line as the root cause instead of a pointer to how to get a traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                           "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(record, file)
    except OSError:  # the summary then lacks the line; the rank's own stderr still has it
        pass


if __name__ == "__main__":
    main()
