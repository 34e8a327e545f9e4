"""What several sub-commands share: `key=value` config overrides anywhere on the line, the check
of output paths while parsing (before any work), and help epilogs of examples (tests/test_cli.py
runs them)."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

# A token that is a config override: a dotted key, '=', a value. Anything else that argparse does
# not know stays an error (a path such as runs/a=b is not an override: '/' is not a key character).
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")

EXAMPLES_TITLE = "examples:"


def is_override(token: str) -> bool:
    return OVERRIDE.match(token) is not None


def add_overrides(p: argparse.ArgumentParser) -> None:
    """The `key=value ...` of a command that reads a job config; `mtrec` collects them from
    anywhere on the command line (before, between or after the options)."""
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, anywhere on the line; the value is YAML, "
                        "e.g. train.dense_optimizer.lr=0.002 model.tower_mlp=[64]")


def examples_epilog(*commands: str) -> str:
    """An epilog listing example command lines (each must run as written from the repository root)."""
    return "\n".join([EXAMPLES_TITLE, *(f"  {c}" for c in commands)])


def help_examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines of a parser's epilog (what `examples_epilog` wrote)."""
    lines = (parser.epilog or "").splitlines()
    if EXAMPLES_TITLE not in lines:
        return []
    return [line.strip() for line in lines[lines.index(EXAMPLES_TITLE) + 1:] if line.strip()]


def output_dir(path: str) -> str:
    """argparse type of an output directory: writable, or creatable as one. Checked while parsing,
    so a bad --out fails before the command does any work (not after an hour of training)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: exists and is not a directory")
    _check_creatable(target, path)
    return path


def output_file(path: str) -> str:
    """argparse type of an output file: not a directory, and its directory writable or creatable."""
    target = Path(path)
    if target.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a directory, expected a file path")
    _check_creatable(target.parent, path)
    return path


def _check_creatable(directory: Path, path: str) -> None:
    existing = directory
    while not existing.exists():  # the nearest existing ancestor is where directories will be made
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: cannot be created, {existing} is not a directory")
    if not _writable(existing):
        raise argparse.ArgumentTypeError(f"{path}: {existing} is not writable")


def _writable(directory: Path) -> bool:
    """Really writable: os.access alone says yes to root on a read-only mount."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    probe = directory / f".mtrec-write-test-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink(missing_ok=True)
    return True
