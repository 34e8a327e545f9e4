"""2-process DistributedModelParallel smoke run for the image (run under torchrun, gloo, CPU).

    docker run --rm -v $PWD/tests/docker:/smoke:ro mtrec:cpu torchrun --nproc_per_node=2 /smoke/dmp_smoke.py

Shards two tables table-wise (one per rank), runs forward + backward with a fused SGD step, and checks
that both ranks see the same pooled embeddings. Exits non-zero on any mismatch; rank 0 logs
"dmp smoke ok" on success (tests/docker/test_docker_image.py looks for it).
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
import torchrec
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.optim import apply_optimizer_in_backward

TABLES = {"t0": ("f0", 8), "t1": ("f1", 4)}  # table -> (feature, embedding dim)
BATCH = 3
LOG = logging.getLogger("dmp_smoke")


def build_ebc() -> torchrec.EmbeddingBagCollection:
    """Two tables on the meta device; DMP materialises them on the rank that owns each one."""
    configs = [torchrec.EmbeddingBagConfig(name=t, embedding_dim=d, num_embeddings=16, feature_names=[f])
               for t, (f, d) in TABLES.items()]
    return torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("meta"))


def batch(rank: int) -> torchrec.KeyedJaggedTensor:
    """A rank-dependent KJT with B=3 rows per feature: [f0 lengths (3), f1 lengths (3)]."""
    return torchrec.KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1"],
        values=torch.tensor([1, 2, 3, 4, 5, 6, 7], dtype=torch.int64) + rank,
        lengths=torch.tensor([2, 1, 1, 1, 1, 1], dtype=torch.int32),
    )


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != 2:
        raise SystemExit(f"run with --nproc_per_node=2 (world size is {world})")
    torch.manual_seed(0)
    ebc = build_ebc()
    apply_optimizer_in_backward(torch.optim.SGD, ebc.parameters(), {"lr": 0.1})
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"),
        constraints={t: ParameterConstraints(sharding_types=["table_wise"]) for t in TABLES},
    )
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(ebc, sharders, dist.GroupMember.WORLD)
    owners = {t: s.ranks for t, s in plan.plan[""].items()}
    if sorted(r for ranks in owners.values() for r in ranks) != [0, 1]:
        raise SystemExit(f"expected one table per rank, got {owners}")
    dmp = DistributedModelParallel(ebc, device=torch.device("cpu"), plan=plan, sharders=sharders)

    pooled = dmp(batch(rank)).wait().values()  # [B, 8 + 4]
    if tuple(pooled.shape) != (BATCH, sum(d for _, d in TABLES.values())):
        raise SystemExit(f"pooled shape {tuple(pooled.shape)}")
    pooled.sum().backward()  # fused SGD updates the sharded tables inside backward

    # Same input on both ranks must give the same pooled rows, wherever the tables live.
    same = dmp(batch(0)).wait().values().detach()
    other = same.clone()
    dist.broadcast(other, src=0)
    if not torch.equal(same, other):
        raise SystemExit(f"rank {rank}: pooled embeddings differ from rank 0")
    dist.barrier()
    if rank == 0:
        LOG.info("dmp smoke ok: world=%d owners=%s pooled=%s", world, owners, tuple(pooled.shape))
    dist.destroy_process_group()


if __name__ == "__main__":
    # torchrec logs every TBE's arguments at INFO; keep the output to warnings and our own line.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", force=True)
    LOG.setLevel(logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
