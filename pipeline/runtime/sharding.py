"""Sharding: planner constraints from config, the memory budget, the TorchRec plan, and the DMP wrapper.

The planner runs over a Topology of the real world size and device type, built through TorchRec's
`TopologyFactory`; rank 0 plans and broadcasts. The plan's text (`describe_plan`) is printed on rank
0 and saved next to every checkpoint, because a checkpoint loads only under the same plan and world
size; `plan_summary` / `plan_details` add the memory and communication estimates (run's plan.txt).

Memory budget (`sharding.per_rank_memory_gb`, default: detected): what a rank may use. A share
(`reserve_fraction`) is kept for activations and batches, the dense parameters' state and the
planner's input-buffer estimate are taken off, and the rest is the storage (DDR on CPU, HBM on GPU)
the planner may fill with table shards. Table bytes are computed here, before any allocation:
rows x dim x dtype bytes + the fused optimiser's state (row-wise Adagrad: 4 bytes per row and
shard; Adagrad: 4 per element; SGD: none). A table too big for every way of splitting it, or a model
too big for the world, is refused with the table, the bytes needed and the bytes available; so is
a planner failure (`PlannerError`). On CPU, a table that does not fit one rank gets column-wise shards
of dim / k columns, k the fewest shards that fit a rank (each shard carries its own row-wise
optimiser state), unless `min_partition` says otherwise: TorchRec's 128-column default would leave
a 64-wide table whole.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.collective_utils import invoke_on_rank_and_broadcast_result
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.constants import BIGINT_DTYPE, MIN_CW_DIM
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (KernelConfig, ParameterConstraints, PlannerError, Topology,
                                                TopologyFactory, TrainerConfig)
from torchrec.distributed.sharding_plan import _find_base_dim
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import data_type_to_dtype

from models.inputs import InputSpec
from models.typed_config import ConfigError
from pipeline.config import CPU_SHARDING_TYPES, GPU_ONLY_SHARDING_TYPES, ShardingConfig, TrainConfig
from pipeline.runtime.distributed import DistContext

log = logging.getLogger(__name__)

# Compute kernels per device type (docs/STACK.md §2): `fused` for sharded tables, `dense` for DP.
CPU_COMPUTE_KERNELS = ("fused", "dense")
GB = 1e9
ROW_SPLIT_TYPES = ("row_wise", "table_row_wise", "grid_shard")
COLUMN_SPLIT_TYPES = ("column_wise", "table_column_wise")
# Dense state per dense parameter, in parameters: weight + gradient + DDP bucket (+ optimiser moments).
_DENSE_COPIES = {"adam": 5, "adamw": 5, "adagrad": 4, "sgd": 3}
_KJT_COPIES = 20  # TorchRec's storage reservation: 2 pipelined batches x 10 internal copies


class MemoryBudgetError(ConfigError):
    """The model cannot be placed within the per-rank memory budget (names the table and the bytes)."""


# ----------------------------------------------------------------------------- table footprints
@dataclass(frozen=True)
class TableFootprint:
    """One embedding table as the budget sees it: shape, element size and fused optimiser."""

    name: str
    rows: int
    dim: int
    dtype: str  # "float32" / "float16"
    elem_bytes: int
    optimizer: Optional[str]  # SparseOptimizerConfig.name; None = inference (no state)

    def shard_bytes(self, rows: int, cols: int) -> int:
        """Weights + optimiser state of one shard of rows x cols."""
        state = {"rowwise_adagrad": rows * 4, "adagrad": rows * cols * 4}.get(self.optimizer or "", 0)
        return rows * cols * self.elem_bytes + state

    @property
    def bytes(self) -> int:
        return self.shard_bytes(self.rows, self.dim)

    def describe(self) -> str:
        state = f" + {self.optimizer} state" if self.optimizer in ("rowwise_adagrad", "adagrad") else ""
        return f"{self.name} ({self.rows:,} x {self.dim} {self.dtype}{state}: {_gb(self.bytes)})"


def table_footprints(model: nn.Module, optimizer: Optional[str]) -> list[TableFootprint]:
    """The EBC tables of `model` (its `sparse_arch.ebc`; none for dense-only models)."""
    sparse_arch = getattr(model, "sparse_arch", None)
    if sparse_arch is None:
        return []
    out = []
    for t in sparse_arch.ebc.embedding_bag_configs():
        dtype = data_type_to_dtype(t.data_type)
        out.append(TableFootprint(t.name, t.num_embeddings, t.embedding_dim, str(dtype).removeprefix("torch."),
                                  torch.empty(0, dtype=dtype).element_size(), optimizer))
    return out


def column_block(dim: int, min_partition: Optional[int]) -> int:
    """Width of TorchRec's column-wise shards: the smallest multiple-of-4 divisor of `dim` that is
    >= min_partition (TorchRec's default 128 when unset), else the whole dim."""
    return min(_find_base_dim(min_partition or MIN_CW_DIM, dim), dim)


def packable_column_block(table_bytes: int, dim: int, available: int, world_size: int) -> int:
    """Column shard width for a table over one rank's `available` bytes: the widest that cuts it into
    shards of at most half of `available` (2 to `world_size` shards wanted; the widths that divide
    the dim may give more, which then share ranks). Half, because shards of
    over half a rank each need a rank of their own: six 10M-row tables cut in two just-too-big halves
    need 12 ranks, in quarters they pack two to a rank next to the small tables."""
    wanted = min(world_size, max(2, math.ceil(2 * table_bytes / available)))
    widths = [w for w in range(4, dim + 1, 4) if dim % w == 0]  # fbgemm: multiples of 4 dividing dim
    enough = [w for w in widths if dim // w >= wanted]
    return max(enough) if enough else (min(widths) if widths else dim)


# ----------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class ShardingBudget:
    """Everything the plan is checked against; bytes are per rank."""

    world_size: int
    local_world_size: int
    device_type: str
    batch_size: int
    per_rank_bytes: int
    source: str  # where per_rank_bytes came from
    reserve_bytes: int
    dense_bytes: int  # dense parameters with gradients and optimiser state
    kjt_bytes: int  # input id buffers (TorchRec's estimate)
    dense_params: int
    tables: tuple[TableFootprint, ...]

    @property
    def table_bytes_per_rank(self) -> int:
        """What table shards may fill on one rank."""
        return self.per_rank_bytes - self.reserve_bytes - self.dense_bytes - self.kjt_bytes


def detected_memory_bytes(device_type: str, local_world_size: int) -> tuple[int, str]:
    """Per-rank memory of this machine: the GPU's memory, or physical RAM (capped by the cgroup
    limit when there is one) shared by the local ranks."""
    if device_type == "cuda":
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return total, f"detected GPU memory {_gb(total)}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.is_file() and limit.read_text().strip().isdigit():
        total = min(total, int(limit.read_text()))
    return total // local_world_size, f"detected {_gb(total)} RAM / {local_world_size} local rank(s)"


def sharding_budget(model: nn.Module, cfg: ShardingConfig, inputs: InputSpec, *, world_size: int,
                    local_world_size: int, device_type: str, batch_size: int,
                    train: Optional[TrainConfig] = None) -> ShardingBudget:
    """The per-rank budget of `model` (EBC on meta; dense parts materialised). `train` None =
    inference: no optimiser state, no gradients."""
    if cfg.per_rank_memory_gb is not None:
        per_rank, source = int(cfg.per_rank_memory_gb * GB), "sharding.per_rank_memory_gb"
    else:
        per_rank, source = detected_memory_bytes(device_type, local_world_size)
    ebc_params = {id(p) for p in model.sparse_arch.ebc.parameters()} if getattr(model, "sparse_arch", None) else set()
    dense_params = sum(p.numel() for p in model.parameters() if id(p) not in ebc_params)
    copies = _DENSE_COPIES[train.dense_optimizer.name] if train is not None else 1
    ids_per_row = sum(cfg.for_table(f.table_name).pooling_factor or 1.0 for f in inputs.sparse_features)
    return ShardingBudget(
        world_size=world_size, local_world_size=local_world_size, device_type=device_type, batch_size=batch_size,
        per_rank_bytes=per_rank, source=source, reserve_bytes=int(per_rank * cfg.reserve_fraction),
        dense_bytes=dense_params * 4 * copies, kjt_bytes=int(batch_size * ids_per_row * BIGINT_DTYPE * _KJT_COPIES),
        dense_params=dense_params,
        tables=tuple(table_footprints(model, train.sparse_optimizer.name if train is not None else None)))


def _allowed_types(cfg: ShardingConfig, table: str, device_type: str) -> tuple[str, ...]:
    types = cfg.for_table(table).sharding_types
    if types:
        return types
    return CPU_SHARDING_TYPES + (GPU_ONLY_SHARDING_TYPES if device_type == "cuda" else ())


def _smallest_rank_share(t: TableFootprint, types: tuple[str, ...], block: int, world: int) -> tuple[int, str]:
    """The fewest bytes one rank must hold of table `t` under the allowed sharding types."""
    options = []
    if set(types) & {"table_wise", "data_parallel"}:
        options.append((t.bytes, "whole"))
    if set(types) & set(COLUMN_SPLIT_TYPES):
        shards = t.dim // block
        per_rank = -(-shards // world)
        options.append((per_rank * t.shard_bytes(t.rows, block),
                        f"column-wise in {shards} shard(s) of {block} columns"))
    if set(types) & set(ROW_SPLIT_TYPES):
        options.append((t.shard_bytes(-(-t.rows // world), t.dim), f"row-wise over {world} ranks"))
    return min(options) if options else (t.bytes, "whole")


def check_budget(cfg: ShardingConfig, budget: ShardingBudget) -> dict[str, int]:
    """Refuse what cannot fit, before any allocation; returns the automatic column-wise shard width
    of each table that needs splitting (and has no `min_partition` of its own)."""
    available = budget.table_bytes_per_rank
    hint = f"per rank {_gb(budget.per_rank_bytes)} ({budget.source})"
    if available <= 0:
        raise MemoryBudgetError(
            f"sharding: {hint} leaves nothing for embedding tables after the reserve "
            f"({_gb(budget.reserve_bytes)}), dense state ({_gb(budget.dense_bytes)}) and id buffers "
            f"({_gb(budget.kjt_bytes)}); raise sharding.per_rank_memory_gb")
    auto: dict[str, int] = {}
    total = 0
    for t in budget.tables:
        tcfg = cfg.for_table(t.name)
        types = _allowed_types(cfg, t.name, budget.device_type)
        min_partition = tcfg.min_partition
        splittable = bool(set(types) & set(COLUMN_SPLIT_TYPES)) and budget.world_size > 1
        # auto column shards only where rows cannot be split (CPU): on GPU the planner picks row-wise
        if min_partition is None and t.bytes > available and splittable and not set(types) & set(ROW_SPLIT_TYPES):
            min_partition = auto[t.name] = packable_column_block(t.bytes, t.dim, available, budget.world_size)
        block = column_block(t.dim, min_partition)
        need, how = _smallest_rank_share(t, types, block, budget.world_size)
        if need > available:
            raise MemoryBudgetError(
                f"sharding: table {t.describe()} does not fit: split {how} (sharding types {list(types)}) it "
                f"still needs {_gb(need)} on one rank, but a rank has {_gb(available)} for tables ({hint}, "
                f"world size {budget.world_size}); raise sharding.per_rank_memory_gb, add ranks"
                + (", or allow row_wise on GPU" if budget.device_type == "cuda" else "")
                + (f", or lower sharding.tables.{t.name}.min_partition"
                   if splittable and t.dim // block < budget.world_size else ""))
        total += t.bytes  # a lower bound: splitting copies only the row-wise optimiser state
    if total > available * budget.world_size:
        largest = max(budget.tables, key=lambda t: t.bytes)
        raise MemoryBudgetError(
            f"sharding: the embedding tables need {_gb(total)} in all (largest: {largest.describe()}), but "
            f"{budget.world_size} rank(s) x {_gb(available)} = {_gb(available * budget.world_size)} are available "
            f"for tables ({hint}); raise sharding.per_rank_memory_gb or add ranks")
    return auto


# ----------------------------------------------------------------------------- constraints and planning
def build_constraints(cfg: ShardingConfig, inputs: InputSpec, device_type: str,
                      auto_min_partition: Optional[dict[str, int]] = None,
                      fp16_tables: frozenset[str] = frozenset()) -> dict[str, ParameterConstraints]:
    """Per-table ParameterConstraints. On CPU, row-wise variants are rejected up front with the
    table name and the allowed set, instead of the planner's opaque "no available sharding type".
    `fp16_tables` are kept off data_parallel: its dense kernel has no fp16 backward on CPU (NaN
    predictions within a few steps, measured), the fused kernels have one."""
    tables = {f.table_name for f in inputs.sparse_features}
    unknown = sorted(set(cfg.tables) - tables)
    if unknown:
        raise ConfigError(f"sharding.tables: unknown table(s) {unknown}; tables are {sorted(tables)}")
    auto_min_partition = auto_min_partition or {}
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
        min_partition = tcfg.min_partition or auto_min_partition.get(table)
        types = tcfg.sharding_types
        if table in fp16_tables:
            if "data_parallel" in types or "dense" in tcfg.compute_kernels:
                raise ConfigError(f"{key}: table {table} has fp16 weights (model.embedding.data_type), which need a "
                                  f"fused kernel; data_parallel / dense cannot train them")
            types = tuple(t for t in (types or _allowed_types(cfg, table, device_type)) if t != "data_parallel")
        if types or tcfg.compute_kernels or min_partition or tcfg.pooling_factor:
            constraints[table] = ParameterConstraints(
                sharding_types=list(types) or None,
                compute_kernels=list(tcfg.compute_kernels) or None,
                min_partition=min_partition,
                pooling_factors=[tcfg.pooling_factor or 1.0],
            )
    return constraints


def make_topology(budget: ShardingBudget) -> Topology:
    """TorchRec's supported construction (TopologyFactory), with the table storage of the budget as
    the device's capacity (HBM on GPU, DDR on CPU)."""
    cap = budget.table_bytes_per_rank
    trainer = TrainerConfig(world_size=budget.world_size, local_world_size=budget.local_world_size,
                            **({"hbm_cap_bytes": cap} if budget.device_type == "cuda" else {"ddr_cap_bytes": cap}))
    return TopologyFactory.create_topology(trainer, kernel_config=KernelConfig(compute_device=budget.device_type))


def _plan_or_error(planner: EmbeddingShardingPlanner, model: nn.Module) -> Union[ShardingPlan, str]:
    """The plan, or the planner's reason for failing (so that every rank can raise it)."""
    try:
        return planner.plan(model, [EmbeddingBagCollectionSharder()])
    except PlannerError as e:
        return str(e)


def plan_sharding(model: nn.Module, cfg: ShardingConfig, inputs: InputSpec, ctx: DistContext, batch_size: int,
                  train: Optional[TrainConfig] = None) -> ShardingPlan:
    """The plan of `plan_with_budget`."""
    return plan_with_budget(model, cfg, inputs, ctx, batch_size, train)[0]


def plan_with_budget(model: nn.Module, cfg: ShardingConfig, inputs: InputSpec, ctx: DistContext, batch_size: int,
                     train: Optional[TrainConfig] = None) -> tuple[ShardingPlan, ShardingBudget]:
    """Check the budget, then plan over the topology of `ctx` (rank 0 plans and broadcasts when a
    process group is up; without one, e.g. `mtrec train --dry-run`, this process plans alone).
    `train` None = inference (no optimiser state in the budget)."""
    budget = sharding_budget(model, cfg, inputs, world_size=ctx.world_size, local_world_size=ctx.local_world_size,
                             device_type=ctx.device.type, batch_size=batch_size, train=train)
    auto = check_budget(cfg, budget)
    if auto:
        log.info("tables over one rank's budget, split column-wise (auto min_partition): %s", auto)
    planner = EmbeddingShardingPlanner(
        topology=make_topology(budget),
        batch_size=batch_size,
        constraints=build_constraints(cfg, inputs, ctx.device.type, auto,
                                      frozenset(t.name for t in budget.tables if t.elem_bytes == 2)),
        # our own accounting above already took the reserve, the dense state and the id buffers off
        storage_reservation=FixedPercentageStorageReservation(0.0),
        debug=False,
    )
    if dist.is_initialized():
        result = invoke_on_rank_and_broadcast_result(dist.GroupMember.WORLD, 0, _plan_or_error, planner, model)
    else:
        result = _plan_or_error(planner, model)
    if isinstance(result, str):
        largest = max(budget.tables, key=lambda t: t.bytes).describe() if budget.tables else "none"
        reason = [line.strip() for line in result.strip().splitlines() if line.strip()]
        raise MemoryBudgetError(
            f"sharding: the planner found no plan for {budget.world_size} rank(s) with "
            f"{_gb(budget.table_bytes_per_rank)} per rank for tables (per rank {_gb(budget.per_rank_bytes)}, "
            f"{budget.source}); largest table {largest}; planner: {reason[0] if reason else '?'}"
            f"{' ' + reason[-1] if len(reason) > 1 else ''}; the planner places shards by speed, so tables "
            f"filling most of the world's budget may not pack: raise sharding.per_rank_memory_gb or add ranks")
    return result, budget


def wrap_model(model: nn.Module, plan: ShardingPlan, ctx: DistContext) -> DistributedModelParallel:
    """Shard the EBC per `plan` and wrap the dense rest in DDP. The model's EBC lives on `meta`
    until here; DMP materialises each shard on its rank."""
    return DistributedModelParallel(model, device=ctx.device, plan=plan, sharders=[EmbeddingBagCollectionSharder()])


# ----------------------------------------------------------------------------- describing a plan
@dataclass(frozen=True)
class _Shard:
    table: str
    rank: int
    offsets: tuple[int, int]
    sizes: tuple[int, int]


def _shards(plan: ShardingPlan, budget: ShardingBudget) -> list[_Shard]:
    """Every placed shard; a data-parallel table counts as one whole copy per rank."""
    shapes = {t.name: (t.rows, t.dim) for t in budget.tables}
    out = []
    for _, module_plan in sorted(plan.plan.items()):
        for table, ps in sorted(module_plan.items()):  # type: ignore[union-attr]
            if ps.sharding_spec is None:  # data_parallel: replicated
                out += [_Shard(table, r, (0, 0), shapes[table]) for r in range(budget.world_size)]
                continue
            for s in ps.sharding_spec.shards:
                out.append(_Shard(table, s.placement.rank(), tuple(s.shard_offsets), tuple(s.shard_sizes)))
    return out


def describe_plan(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel, ranks (what rank 0 prints and saves)."""
    lines = []
    for module_path, module_plan in sorted(plan.plan.items()):
        for table, ps in sorted(module_plan.items()):  # type: ignore[union-attr]
            ranks = sorted({r for r in (ps.ranks or [])})
            lines.append(f"{module_path}.{table}: {ps.sharding_type} / {ps.compute_kernel} on ranks {ranks}")
    return "\n".join(lines)


def rank_table_bytes(plan: ShardingPlan, budget: ShardingBudget) -> list[int]:
    """Weights + optimiser state of the table shards on each rank."""
    tables = {t.name: t for t in budget.tables}
    per_rank = [0] * budget.world_size
    for s in _shards(plan, budget):
        per_rank[s.rank] += tables[s.table].shard_bytes(*s.sizes)
    return per_rank


def comm_bytes_per_step(plan: ShardingPlan, budget: ShardingBudget, cfg: ShardingConfig) -> int:
    """Estimated bytes one rank sends per training step (fwd + bwd), averaged over ranks.

    Per table shard (width c) owned by one rank: ids in (each other rank sends B x pooling x 8
    bytes + 4 per row of lengths), pooled outputs out and their gradients back (B x c x 4 per other
    rank, each way). Row-wise shards: ids to their row owners and a reduce-scatter / all-gather of
    B x dim x 4 per rank each way. Data-parallel tables and the dense parameters: a ring all-reduce
    of their gradients, 2 (W - 1) / W x bytes. The real all-to-all also pads and splits; this is
    the order of magnitude the planner's choice implies, not a measurement.
    """
    w, b = budget.world_size, budget.batch_size
    if w == 1:
        return 0
    tables = {t.name: t for t in budget.tables}
    total = 0.0  # bytes sent by all ranks together
    for _, module_plan in plan.plan.items():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            t = tables[table]
            ids = b * ((cfg.for_table(table).pooling_factor or 1.0) * 8 + 4)
            if ps.sharding_type == "data_parallel":
                total += w * 2 * (w - 1) / w * t.rows * t.dim * 4
            elif ps.sharding_type in ROW_SPLIT_TYPES:
                total += (w - 1) * ids + 2 * w * (w - 1) / w * b * t.dim * 4
            else:
                for s in ps.sharding_spec.shards:
                    total += (w - 1) * (ids + 2 * b * s.shard_sizes[1] * 4)
    total += w * 2 * (w - 1) / w * budget.dense_params * 4
    return int(total / w)


def plan_summary(plan: ShardingPlan, budget: ShardingBudget, cfg: ShardingConfig) -> str:
    """ONE line: world, budget, per-rank table bytes, split tables and the communication estimate."""
    per_rank = rank_table_bytes(plan, budget)
    split = []
    for _, module_plan in sorted(plan.plan.items()):
        for table, ps in sorted(module_plan.items()):  # type: ignore[union-attr]
            if ps.sharding_spec is not None and len(ps.sharding_spec.shards) > 1:
                split.append(f"{table} {ps.sharding_type} x{len(ps.sharding_spec.shards)} on {sorted(set(ps.ranks))}")
    fixed = budget.dense_bytes + budget.kjt_bytes
    return (f"plan: {budget.world_size} rank(s) on {budget.device_type}, budget {_gb(budget.per_rank_bytes)}/rank "
            f"({budget.source}), {_gb(budget.table_bytes_per_rank)} of it for tables; per-rank estimate "
            f"{_per_rank([x + fixed for x in per_rank])} = tables+optimizer {_per_rank(per_rank)}"
            f" + dense state {_gb(budget.dense_bytes)} + id buffers {_gb(budget.kjt_bytes)} (all tables "
            f"{_gb(sum(t.bytes for t in budget.tables))}); split: {'; '.join(split) or 'none'}; "
            f"est. comm {comm_bytes_per_step(plan, budget, cfg) / 1e6:,.1f} MB/step/rank at batch {budget.batch_size}")


def plan_details(plan: ShardingPlan, budget: ShardingBudget) -> str:
    """Per table: shape, dtype, footprint, and each shard's rank, offsets, sizes and bytes."""
    tables = {t.name: t for t in budget.tables}
    lines = [f"per-rank budget {budget.per_rank_bytes:,} B ({budget.source}): reserve {budget.reserve_bytes:,} B, "
             f"dense state {budget.dense_bytes:,} B ({budget.dense_params:,} params), id buffers "
             f"{budget.kjt_bytes:,} B, tables {budget.table_bytes_per_rank:,} B"]
    for shard in _shards(plan, budget):
        t = tables[shard.table]
        lines.append(f"  {t.name} [{t.rows} x {t.dim} {t.dtype}] rank {shard.rank}: offsets {list(shard.offsets)} "
                     f"sizes {list(shard.sizes)} {t.shard_bytes(*shard.sizes):,} B")
    lines.append("per-rank table bytes: " + ", ".join(
        f"rank {r} {b:,} B" for r, b in enumerate(rank_table_bytes(plan, budget))))
    return "\n".join(lines)


def plan_file_text(plan: ShardingPlan, budget: ShardingBudget, cfg: ShardingConfig) -> str:
    """A run's plan.txt: the table lines (`describe_plan`, what checkpoints compare), the summary
    line, then the per-shard detail."""
    return "\n".join([describe_plan(plan), plan_summary(plan, budget, cfg), plan_details(plan, budget)]) + "\n"


def _per_rank(values: list[int]) -> str:
    """[a, b] for a few ranks; min..max (and the fullest rank) for many."""
    if len(values) <= 4:
        return f"[{', '.join(_gb(v) for v in values)}]"
    return f"{_gb(min(values))}..{_gb(max(values))} (max on rank {values.index(max(values))})"


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.01 * GB else f"{n / 1e6:.2f} MB"
