"""Sharding: planner constraints from config, the TorchRec plan, and the DMP wrapper.

The planner runs over a Topology of the real world size and device type; rank 0 plans and
broadcasts (`collective_plan`). The plan's text is printed on rank 0 and saved next to every
checkpoint, because a checkpoint loads only under the same plan and world size.
"""
from __future__ import annotations

import logging

import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan

from models.inputs import InputSpec
from models.typed_config import ConfigError
from pipeline.config import CPU_SHARDING_TYPES, GPU_ONLY_SHARDING_TYPES, ShardingConfig
from pipeline.runtime.distributed import DistContext

log = logging.getLogger(__name__)

# Compute kernels per device type (docs/STACK.md §2): `fused` for sharded tables, `dense` for DP.
CPU_COMPUTE_KERNELS = ("fused", "dense")


def build_constraints(cfg: ShardingConfig, inputs: InputSpec, device_type: str) -> dict[str, ParameterConstraints]:
    """Per-table ParameterConstraints. On CPU, row-wise variants are rejected up front with the
    table name and the allowed set, instead of the planner's opaque "no available sharding type"."""
    tables = {f.table_name for f in inputs.sparse_features}
    unknown = sorted(set(cfg.tables) - tables)
    if unknown:
        raise ConfigError(f"sharding.tables: unknown table(s) {unknown}; tables are {sorted(tables)}")
    constraints = {}
    for table in sorted(tables):
        tcfg = cfg.for_table(table)
        key = f"sharding.tables.{table}" if table in cfg.tables else "sharding.default"
        if device_type == "cpu":
            gpu_only = sorted(set(tcfg.sharding_types) & set(GPU_ONLY_SHARDING_TYPES))
            if gpu_only:
                raise ConfigError(
                    f"{key}: sharding types {gpu_only} for table {table} need GPUs (gloo lacks the "
                    f"collectives); on CPU use {list(CPU_SHARDING_TYPES)}"
                )
            bad_kernels = sorted(set(tcfg.compute_kernels) - set(CPU_COMPUTE_KERNELS))
            if bad_kernels:
                raise ConfigError(f"{key}: compute kernels {bad_kernels} are not available on CPU; "
                                  f"use {list(CPU_COMPUTE_KERNELS)}")
        unknown_types = sorted(set(tcfg.sharding_types) - set(CPU_SHARDING_TYPES + GPU_ONLY_SHARDING_TYPES))
        if unknown_types:
            raise ConfigError(f"{key}: unknown sharding types {unknown_types}")
        if tcfg.sharding_types or tcfg.compute_kernels:
            constraints[table] = ParameterConstraints(
                sharding_types=list(tcfg.sharding_types) or None,
                compute_kernels=list(tcfg.compute_kernels) or None,
            )
    return constraints


def plan_sharding(model: nn.Module, cfg: ShardingConfig, inputs: InputSpec, ctx: DistContext,
                  batch_size: int) -> ShardingPlan:
    """Rank 0 plans over the real topology and broadcasts the plan to every rank."""
    topology = Topology(world_size=ctx.world_size, compute_device=ctx.device.type,
                        local_world_size=ctx.local_world_size)
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=build_constraints(cfg, inputs, ctx.device.type),
        debug=False,
    )
    return planner.collective_plan(model, [EmbeddingBagCollectionSharder()], dist.GroupMember.WORLD)


def wrap_model(model: nn.Module, plan: ShardingPlan, ctx: DistContext) -> DistributedModelParallel:
    """Shard the EBC per `plan` and wrap the dense rest in DDP. The model's EBC lives on `meta`
    until here; DMP materialises each shard on its rank."""
    return DistributedModelParallel(model, device=ctx.device, plan=plan, sharders=[EmbeddingBagCollectionSharder()])


def describe_plan(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel, ranks (what rank 0 prints and saves)."""
    lines = []
    for module_path, module_plan in sorted(plan.plan.items()):
        for table, ps in sorted(module_plan.items()):  # type: ignore[union-attr]
            ranks = sorted({r for r in (ps.ranks or [])})
            lines.append(f"{module_path}.{table}: {ps.sharding_type} / {ps.compute_kernel} on ranks {ranks}")
    return "\n".join(lines)
