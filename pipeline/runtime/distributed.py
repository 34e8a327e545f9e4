"""Process-group set-up for torchrun (any world size) and for a single plain process.

gloo on CPU, NCCL when CUDA is available: picked automatically. A plain `mtrec train` (no torchrun
environment) still gets a 1-rank gloo group, because DistributedModelParallel and the planner's
collective plan need one; the code path is then identical for 1 and N ranks.
"""
from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass
from typing import Any
import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str | None = None) -> DistContext:
    """Join (or create) the default process group and pick the device for this rank.

    backend: None picks NCCL on CUDA hosts, else gloo; "gloo" keeps the job on the CPU even on a
    CUDA host (`mtrec metrics`, whose states are numpy)."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    use_cuda = backend == "nccl"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            _init_from_torchrun_env(backend)
        else:  # a plain process: a private 1-rank group on a free loopback port
            dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                    rank=0, world_size=1)
    ctx = DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
        device=device,
        backend=backend,
    )
    log.info("process group: rank %d of %d, backend %s, device %s", ctx.rank, ctx.world_size, backend, device)
    return ctx


def _init_from_torchrun_env(backend: str) -> None:
    """env:// initialisation, with a store namespace per torchrun restart attempt.

    After `torchrun --max-restarts` restarts the workers, they rendezvous on the same agent store
    as the failed attempt; without a fresh namespace a fast rank can read a dead peer's gloo
    address left by the previous attempt and wait forever to connect to it.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0:
        dist.init_process_group(backend=backend)
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent_hosts_store and rank == 0)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"mtrec/attempt_{attempt}", store),
                            rank=rank, world_size=world_size)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed every RNG the job uses. The same seed on every rank keeps model init identical
    across ranks (DDP also broadcasts rank 0's dense weights)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def all_reduce_int(value: int, op: dist.ReduceOp, device: torch.device) -> int:
    """An int agreed by every rank (e.g. MIN of local batch counts so all ranks run equal steps)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()



def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's JSON-able `obj`, in rank order, on every rank."""
    if ctx.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
