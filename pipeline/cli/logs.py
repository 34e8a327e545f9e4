"""Logging of the `mtrec` CLI: a quiet console, a full per-run log file, and the one list of
third-party messages that are silenced (by exact text, each with the reason).

Console: rank 0 shows mtrec's own INFO lines (progress, checkpoints, results); every rank shows
WARNING and above from anyone. `-v` shows DEBUG from everyone. RUN/train.log (rank 0; other ranks
RUN/train.rank<r>.log) gets mtrec's records from DEBUG and the libraries' from INFO up, Python
warnings included.
"""
from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

FORMAT = "%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"
OWN_LOGGERS = ("pipeline", "models", "mtrec")

# Known-benign messages of the libraries we run, silenced by their exact text (anything else still
# shows). Each one was checked and says nothing the user can or should act on:
BENIGN_LOG_RECORDS: tuple[tuple[str, str], ...] = (  # (logger name, regular expression of the whole message)
    # torch.fx: printed once per process (every rank and every DataLoader worker) because TorchRec
    # calls the deprecated is_fx_tracing(); nothing traces here.
    ("torch.fx._symbolic_trace", re.escape(
        "is_fx_tracing will return true for both fx.symbolic_trace and torch.export. Please use "
        "is_fx_tracing_symbolic_tracing() for specifically fx.symbolic_trace or torch.compiler.is_compiling() "
        "for specifically torch.export/compile.")),
    # TorchRec's planner checks every table's shard placement; a data-parallel table is replicated,
    # has no shards by design, and is logged once per table and rank at every plan.
    ("root", r"Sharding spec not found for sparse_arch\.ebc\.t_\w+"),
    # TorchRec warns for every data-parallel table that UVM-caching parameters do not apply to it;
    # mtrec sets none.
    ("torchrec.distributed.utils", re.escape("Sharding Type is data_parallel, caching params will be ignored")),
)
BENIGN_WARNINGS: tuple[str, ...] = (  # the start of a Python warning's message
    # TorchRec's DistributedModelParallel builds its DDP with broadcast_buffers=False, an argument
    # torch 2.13 deprecates; printed by every rank at every model wrap, nothing for us to change.
    "`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead.",
    # torch.distributed.checkpoint planning over TorchRec's sharded tables, which TorchRec still
    # keeps as ShardedTensor (its choice, not ours): twice per rank at every checkpoint load.
    "Please use DTensor instead and we are deprecating ShardedTensor.",
    # fbgemm's CPU lookup for data-parallel tables computes its backward inside its CPU kernel, which
    # torch 2.13's autograd flags at every backward; the gradient is right (tests/train/test_optimizer.py
    # compares it with nn.EmbeddingBag's).
    "fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
)


class _Drop(logging.Filter):
    """Drops the records of one logger whose whole message matches `pattern`."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.fullmatch(record.getMessage()) is None


class _Console(logging.Filter):
    """What reaches the console: WARNING+ from anyone; mtrec's INFO on rank 0 only."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        own = record.name.split(".")[0] in OWN_LOGGERS
        return own and record.levelno >= logging.INFO and self.rank == 0


def setup_logging(verbose: bool, rank: int) -> None:
    """Console logging of one CLI process (called once, before any work)."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT.format(rank=rank)))
    if not verbose:
        console.addFilter(_Console(rank))
    root = logging.getLogger()
    root.handlers[:] = [console]
    # DEBUG for our own loggers (the run log wants them); third parties from INFO (fbgemm logs every
    # table batch's arguments at INFO, which the console filter keeps off the screen).
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.captureWarnings(True)  # Python warnings become log records: console and run log
    silence_benign()


def silence_benign() -> None:
    """Drop the known-benign library messages above (also used by `python -m pipeline.stack`)."""
    for name, pattern in BENIGN_LOG_RECORDS:
        logging.getLogger(name).addFilter(_Drop(pattern))
    for message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))


def add_run_log(run_dir: Path, rank: int, name: str = "train") -> Path:
    """Append everything this process logs to RUN/<name>.log (rank 0) or RUN/<name>.rank<r>.log;
    returns the file."""
    path = Path(run_dir) / (f"{name}.log" if rank == 0 else f"{name}.rank{rank}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT.format(rank=rank)))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    return path
