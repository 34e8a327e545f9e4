"""Collectives over numpy arrays for the metric states: all-reduce SUM in place and all-gather of rows.

Importing this module does not import torch. A process that never imported `torch.distributed`
cannot have joined a process group, so `initialised_dist()` looks it up in `sys.modules` instead
of importing it: a 1-process `mtrec metrics` then runs on numpy alone, without torch. The
collectives themselves import torch, and are only called when the group has more than one rank.
Joining a group is `pipeline.runtime.distributed.init_distributed`.
"""
from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Sequence

import numpy as np


def initialised_dist() -> ModuleType | None:
    """`torch.distributed` when this process has an initialised default process group, else None."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def group_world_size(group: Any = None) -> int:
    """Ranks in `group` (None: the default group); 1 without an initialised process group."""
    dist = initialised_dist()
    return 1 if dist is None else dist.get_world_size(group)


def _collective_device(group: Any) -> Any:
    """The torch.device a collective of `group` runs on: the current GPU for NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_arrays_(arrays: Sequence[np.ndarray], group: Any = None) -> None:
    """All-reduce SUM of numpy arrays of one dtype, in place, as one flat collective."""
    import torch
    import torch.distributed as dist

    if not arrays:
        return
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays])).to(_collective_device(group))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    reduced = flat.cpu().numpy()
    offset = 0
    for a in arrays:
        a[...] = reduced[offset:offset + a.size].reshape(a.shape)
        offset += a.size


def all_gather_rows(rows: np.ndarray, group: Any = None) -> np.ndarray:
    """Concatenation, in rank order, of every rank's `rows` ([n_r, ...], any n_r, same dtype and trailing shape)."""
    import torch
    import torch.distributed as dist

    device = _collective_device(group)
    world = dist.get_world_size(group)
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c.item()) for c in counts]
    padded = np.zeros((max(sizes),) + rows.shape[1:], dtype=rows.dtype)
    padded[:rows.shape[0]] = rows
    mine = torch.from_numpy(padded).to(device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    return np.concatenate([g.cpu().numpy()[:n] for g, n in zip(gathered, sizes)])
