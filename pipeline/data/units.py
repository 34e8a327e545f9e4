"""Work units (one Parquet row group each) and their assignment to ranks x DataLoader workers.

Global worker g = rank * W + worker_id out of G = world_size * W, with W = max(1, num_workers).
Every unit goes to exactly one g, so every row is read exactly once per epoch for any world size
and worker count (docs/STACK.md §6).
"""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.schema import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkUnit:
    """One row group of one Parquet file."""

    path: str
    row_group: int
    num_rows: int


def read_footer(path: str) -> pq.FileMetaData:
    """The Parquet footer of `path`; DataError naming the file when it is empty, truncated or not Parquet."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read Parquet file ({e.strerror})") from None
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes), not a Parquet file")
    try:
        return pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: truncated or not a Parquet file ({size} bytes): {e}") from None


# Written by `mtrec evaluate --write-predictions` (pipeline/eval/predictions.py); the leading "_" keeps
# Arrow and Spark dataset readers from taking it for a data file.
MANIFEST = "_manifest.json"


def expand_parquet(pattern: str, flag: str) -> list[str]:
    """Sorted Parquet files of a glob (recursive `**` allowed) or of a directory: the files its
    _manifest.json lists when it has one, else all *.parquet below it. `flag` names the command-line
    option in the error when nothing matches."""
    if os.path.isdir(pattern) and os.path.isfile(os.path.join(pattern, MANIFEST)):
        return manifest_files(pattern)
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*.parquet")
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(f"{flag} {pattern!r}: no files match")
    return paths


def manifest_files(directory: str) -> list[str]:
    """The files a manifest lists, each checked against its footer's row count."""
    manifest_path = os.path.join(directory, MANIFEST)
    try:
        with open(manifest_path) as f:
            entries = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{manifest_path}: unreadable manifest ({type(e).__name__}: {e})") from None
    paths = []
    for entry in entries:
        path = os.path.join(directory, entry["file"])
        rows = read_footer(path).num_rows
        if rows != entry["rows"]:
            raise DataError(f"{path}: {rows} rows, {manifest_path} records {entry['rows']}")
        paths.append(path)
    return sorted(paths)


def list_units(paths: Iterable[str]) -> list[WorkUnit]:
    """All row groups of `paths` from the footers only, sorted by (path, row_group).

    Policy: a valid Parquet file with zero rows (e.g. an empty shard from a Spark job) contributes no
    units and is logged; zero rows in total is an error.
    """
    paths = sorted(set(str(p) for p in paths))
    if not paths:
        raise FileNotFoundError("no Parquet files given")
    units = []
    for path in paths:
        meta = read_footer(path)
        if meta.num_rows == 0:
            log.warning("%s: Parquet file has no rows; skipped", path)
        units += [WorkUnit(path, rg, meta.row_group(rg).num_rows) for rg in range(meta.num_row_groups)
                  if meta.row_group(rg).num_rows > 0]
    if not units:
        raise DataError(f"no rows in {len(paths)} Parquet file(s): {paths[:3]}{' ...' if len(paths) > 3 else ''}")
    return units


def global_worker(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """(g, G): this worker's global index and the number of global workers."""
    per_rank = max(1, num_workers)
    if not (0 <= rank < world_size and 0 <= worker_id < per_rank):
        raise ValueError(f"bad worker coordinates rank={rank}/{world_size} worker={worker_id}/{num_workers}")
    return rank * per_rank + worker_id, world_size * per_rank


def assign_units(units: list[WorkUnit], rank: int, world_size: int, worker_id: int, num_workers: int, *,
                 shuffle: bool, seed: int, epoch: int) -> list[WorkUnit]:
    """The units global worker (rank, worker_id) reads this epoch, in reading order.

    shuffle (training): units are permuted with (seed, epoch), then dealt round-robin.
    no shuffle (evaluation): units keep their order and each global worker gets one contiguous run,
    balanced by rows (a unit goes to the worker whose share contains the unit's middle row).
    """
    g, total_workers = global_worker(rank, world_size, worker_id, num_workers)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(units))
        return [units[i] for k, i in enumerate(order) if k % total_workers == g]
    rows = np.array([u.num_rows for u in units], dtype=np.int64)
    middle = 2 * (np.cumsum(rows) - rows) + rows  # twice the middle row index, kept integral
    owner = np.minimum(middle * total_workers // max(1, 2 * int(rows.sum())), total_workers - 1)
    return [u for u, o in zip(units, owner) if o == g]
