"""Sharding under a per-rank memory budget: real TorchRec planning (no process group, nothing
allocated: the EBC stays on meta), the up-front refusal, the plan summary and `--dry-run`."""
from __future__ import annotations

import logging

import pytest
import torch

from models.inputs import InputSpec, SparseFeature, Task
from models.typed_config import ConfigError, from_dict
from pipeline.config import JobConfig, ShardingConfig
from pipeline.data.schema import DatasetSchema
from pipeline.runtime.distributed import DistContext
from pipeline.runtime.sharding import (MemoryBudgetError, build_constraints, packable_column_block, describe_plan, plan_details, plan_summary, plan_with_budget,
                                       rank_table_bytes)
from pipeline.train.trainer import build_training_model
from tests.conftest import mtrec


def _plan(tables: dict[str, tuple[int, int]], sharding: dict, world: int = 2, device: str = "cpu",
          local_world: int | None = None, data_type: str = "fp32"):
    inputs = InputSpec(dense_dim=4, sparse_features=tuple(SparseFeature(n, rows, dim) for n, (rows, dim) in tables.items()),
                       tasks=(Task("y"),))
    job = from_dict(JobConfig, {"model": {"backbone": {"type": "mmoe", "num_experts": 2, "expert_out_dims": [[8]]},
                                          "embedding": {"data_type": data_type}},
                                "sharding": sharding})
    model = build_training_model(job, inputs)
    ctx = DistContext(rank=0, world_size=world, local_rank=0, local_world_size=local_world or world,
                      device=torch.device(device), backend="none")
    plan, budget = plan_with_budget(model, job.sharding, inputs, ctx, batch_size=4096, train=job.train)
    return plan, budget, job.sharding


def test_table_larger_than_a_rank_is_split_column_wise_over_both_ranks():
    # 10M x 64 fp32 = 2.56 GB + 40 MB of row-wise Adagrad state; a rank has 2 GB (1.7 GB for tables).
    # TorchRec's 128-column min_partition would keep it whole: the automatic one splits it in two.
    plan, budget, cfg = _plan({"big": (10_000_000, 64), "small": (1000, 8)},
                              {"per_rank_memory_gb": 2.0, "tables": {"t_small": {"sharding_types": ["table_wise"]}}})
    ps = plan.plan["sparse_arch.ebc"]["t_big"]
    assert ps.sharding_type == "column_wise" and sorted(ps.ranks) == [0, 1]
    assert [list(s.shard_sizes) for s in ps.sharding_spec.shards] == [[10_000_000, 32], [10_000_000, 32]]
    half = 10_000_000 * 32 * 4 + 10_000_000 * 4
    per_rank = rank_table_bytes(plan, budget)
    assert sorted(per_rank)[0] == half and sorted(per_rank)[1] == half + 1000 * 8 * 4 + 1000 * 4
    assert max(per_rank) <= budget.table_bytes_per_rank
    summary = plan_summary(plan, budget, cfg)
    assert "\n" not in summary and "t_big column_wise x2 on [0, 1]" in summary and "MB/step/rank" in summary
    assert "sparse_arch.ebc.t_big: column_wise / fused on ranks [0, 1]" in describe_plan(plan).splitlines()
    assert "t_big [10000000 x 64 float32] rank 1: offsets [0, 32] sizes [10000000, 32] 1,320,000,000 B" \
        in plan_details(plan, budget)


def test_big_tables_are_cut_into_shards_that_pack_two_to_a_rank():
    # The criteo-like shape: six 10M x 16 tables (0.68 GB each with their Adagrad state) and small ones,
    # 10 ranks of 0.80 GB (0.67 GB for tables). Halves (0.34 GB) would fit a rank once but not twice,
    # so 12 halves would need 12 ranks and the planner found no plan; quarters pack.
    tables = {f"big{i}": (10_000_000, 16) for i in range(6)} | {f"small{i}": (50_000, 16) for i in range(6)}
    plan, budget, _ = _plan(tables, {"per_rank_memory_gb": 0.80}, world=10)
    for i in range(6):
        ps = plan.plan["sparse_arch.ebc"][f"t_big{i}"]
        assert ps.sharding_type == "column_wise"
        assert [list(s.shard_sizes) for s in ps.sharding_spec.shards] == [[10_000_000, 4]] * 4
    assert max(rank_table_bytes(plan, budget)) <= budget.table_bytes_per_rank


@pytest.mark.parametrize("table_bytes, dim, available, world, width", [
    (2_600_000_000, 64, 1_700_000_000, 2, 32),  # two shards are all 2 ranks can take
    (680_000_000, 16, 679_000_000, 10, 4),      # halves would be over half a rank: quarters
    (680_000_000, 16, 679_000_000, 3, 4),       # 3 wanted, 16 splits in 4s: four shards on 3 ranks
    (100, 6, 60, 4, 6),                         # no multiple-of-4 width divides 6: kept whole
])
def test_automatic_column_shard_width(table_bytes, dim, available, world, width):
    assert packable_column_block(table_bytes, dim, available, world) == width


def test_explicit_min_partition_128_cannot_split_a_64_wide_table_and_is_refused_before_planning():
    sharding = {"per_rank_memory_gb": 2.0,
                "tables": {"t_big": {"sharding_types": ["column_wise"], "min_partition": 128}}}
    with pytest.raises(MemoryBudgetError, match=r"table t_big \(10,000,000 x 64 float32 \+ rowwise_adagrad state: "
                                                r"2.60 GB\) does not fit.* needs 2.60 GB on one rank, but a rank has "
                                                r"1.70 GB for tables"):
        _plan({"big": (10_000_000, 64)}, sharding)


def test_model_larger_than_the_world_is_refused_naming_the_bytes():
    with pytest.raises(MemoryBudgetError, match=r"tables need 5.20 GB in all \(largest: t_a .*2 rank\(s\) x 1.70 GB"):
        _plan({"a": (10_000_000, 64), "b": (10_000_000, 64)}, {"per_rank_memory_gb": 2.0})


def test_planner_failure_becomes_a_budget_error():
    # three ~1 GB tables, table-wise only, 1.70 GB per rank: each fits, the total fits 2 ranks,
    # but no rank can hold two of them: the planner's PlannerError, reworded
    tables = {name: (3_800_000, 64) for name in "abc"}
    sharding = {"per_rank_memory_gb": 2.0, "default": {"sharding_types": ["table_wise"]}}
    with pytest.raises(MemoryBudgetError, match=r"the planner found no plan for 2 rank\(s\) with 1.70 GB per rank"):
        _plan(tables, sharding)


def test_topology_is_built_by_torchrecs_factory(caplog):
    with caplog.at_level(logging.WARNING):
        _plan({"a": (1000, 8)}, {"per_rank_memory_gb": 1.0})
    assert not [r for r in caplog.records if "constructed directly" in r.getMessage()]


def test_gpu_plan_splits_the_big_tables_row_wise():
    # a 2 x 8 GPU job planned on this CPU machine: 10M x 16 tables (0.68 GB) over 0.6 GB per GPU
    tables = {f"big{i}": (10_000_000, 16) for i in range(4)}
    tables["small"] = (1000, 16)
    plan, budget, _ = _plan(tables, {"per_rank_memory_gb": 0.6, "tables": {"t_small": {"sharding_types": ["table_wise"]}}},
                            world=16, device="cuda", local_world=8)
    for i in range(4):
        ps = plan.plan["sparse_arch.ebc"][f"t_big{i}"]
        assert ps.sharding_type in ("row_wise", "table_row_wise") and ps.compute_kernel == "fused"
    assert max(rank_table_bytes(plan, budget)) <= budget.table_bytes_per_rank


def test_fp16_tables_hold_half_the_weight_bytes_and_stay_off_data_parallel():
    plan, budget, _ = _plan({"big": (1_000_000, 16), "tiny": (10, 16)}, {"per_rank_memory_gb": 1.0}, data_type="fp16")
    assert {t.name: t.dtype for t in budget.tables} == {"t_big": "float16", "t_tiny": "float16"}
    assert sum(rank_table_bytes(plan, budget)) == 1_000_000 * (16 * 2 + 4) + 10 * (16 * 2 + 4)
    # the planner may pick data-parallel for small fp32 tables; fp16 ones are constrained to fused types
    assert {ps.compute_kernel for ps in plan.plan["sparse_arch.ebc"].values()} == {"fused"}
    inputs = InputSpec(dense_dim=4, sparse_features=(SparseFeature("tiny", 10, 16),), tasks=(Task("y"),))
    constraints = build_constraints(ShardingConfig(), inputs, "cpu", fp16_tables=frozenset({"t_tiny"}))
    assert constraints["t_tiny"].sharding_types == ["table_wise", "column_wise", "table_column_wise"]
    assert build_constraints(ShardingConfig(), inputs, "cpu") == {}


def test_fp16_tables_refuse_data_parallel():
    with pytest.raises(ConfigError, match="t_tiny has fp16 weights.*data_parallel"):
        _plan({"tiny": (10, 16)}, {"default": {"sharding_types": ["data_parallel"]}}, data_type="fp16")


@pytest.mark.parametrize("sharding, key", [
    ({"default": {"min_partition": 6}}, "sharding.default.min_partition"),
    ({"per_rank_memory_gb": 0}, "sharding.per_rank_memory_gb"),
    ({"reserve_fraction": 1.0}, "sharding.reserve_fraction"),
    ({"tables": {"t_a": {"pooling_factor": 0}}}, "pooling_factor"),
])
def test_bad_sharding_values_are_config_errors(sharding, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(JobConfig, {"sharding": sharding})


def test_tiny_budget_is_refused_with_one_line(tmp_path, census_dir):
    proc = mtrec("train", "--config", "tests/train/small_adatt.yaml", "--data", str(census_dir), "--out",
                 str(tmp_path / "run"), "--dry-run", "sharding.per_rank_memory_gb=0.001", check=False)
    assert proc.returncode == 2
    assert "leaves nothing for embedding tables" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_prints_the_plan_for_the_given_world_size_without_training(tmp_path, census_dir):
    proc = mtrec("train", "--config", "tests/train/small_adatt.yaml", "--data", str(census_dir), "--out",
                 str(tmp_path / "run"), "--dry-run", "--world-size", "4", "sharding.per_rank_memory_gb=0.5")
    lines = proc.stdout.splitlines()
    tables = len(DatasetSchema.load(census_dir).sparse)
    assert sum(line.startswith("sparse_arch.ebc.t_") for line in lines) == tables  # one line per table
    summary = [line for line in lines if line.startswith("plan: ")]
    assert len(summary) == 1 and "4 rank(s) on cpu" in summary[0] and "per-rank estimate" in summary[0]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert "constructed directly" not in proc.stderr
