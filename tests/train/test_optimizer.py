"""Optimiser wiring inside a real (1-rank gloo) DistributedModelParallel."""
from __future__ import annotations

import pytest
import torch

from models.batch import MultiTaskBatch
from models.config import ModelConfig
from models.factory import build_model
from models.inputs import InputSpec, SparseFeature, Task
from models.typed_config import from_dict
from pipeline.config import LRScheduleConfig, ShardingConfig, TableShardingConfig, TrainConfig
from pipeline.runtime.distributed import init_distributed, shutdown_distributed
from pipeline.train.optimizer import LRSchedule, build_optimizer, fuse_sparse_optimizer, lr_factor
from pipeline.runtime.sharding import plan_sharding, wrap_model
from torchrec import KeyedJaggedTensor

INPUTS = InputSpec(dense_dim=2, sparse_features=(SparseFeature("a", 50, 4), SparseFeature("b", 50, 4)),
                   tasks=(Task("x"), Task("y")))


@pytest.fixture(scope="module")
def ctx():
    ctx = init_distributed()
    yield ctx
    shutdown_distributed()


def _batch(rows: int = 8) -> MultiTaskBatch:
    g = torch.Generator().manual_seed(0)
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.randint(0, 50, (2 * rows,), generator=g),
                            lengths=torch.ones(2 * rows, dtype=torch.int32), stride=rows)
    return MultiTaskBatch(dense=torch.randn(rows, 2, generator=g), sparse_features=kjt,
                          labels=torch.randint(0, 2, (rows, 2), generator=g).float(), masks=torch.ones(rows, 2),
                          weights=torch.ones(rows))


_MODEL = {"backbone": {"type": "mmoe", "num_experts": 2, "expert_out_dims": [[8]]}, "tower_mlp": [4]}


def _setup(ctx, sharding_type: str, grad_clip=None):
    model = build_model(from_dict(ModelConfig, _MODEL), INPUTS, ebc_device="meta")
    cfg = TrainConfig(grad_clip_norm=grad_clip)
    fuse_sparse_optimizer(model.sparse_arch.ebc, cfg.sparse_optimizer)
    sharding = ShardingConfig(default=TableShardingConfig(sharding_types=(sharding_type,)))
    dmp = wrap_model(model, plan_sharding(model, sharding, INPUTS, ctx, 8), ctx)
    return dmp, build_optimizer(dmp, cfg)


def _table(dmp) -> torch.Tensor:
    value = dmp.state_dict()["sparse_arch.ebc.embedding_bags.t_a.weight"]
    return torch.cat([s.tensor for s in value.local_shards()]) if hasattr(value, "local_shards") else value.clone()


def _step(dmp, opt) -> None:
    opt.zero_grad()
    loss, _ = dmp(_batch())
    loss.backward()
    opt.step()


def test_lr_schedule_reaches_the_fused_embedding_optimizer(ctx):
    dmp, opt = _setup(ctx, "table_wise")
    assert dmp.fused_optimizer.param_groups, "table-wise tables must be fused"
    schedule = LRSchedule(opt, LRScheduleConfig(), total_steps=10)
    for group in opt.param_groups:
        group["lr"] = 0.0  # what a schedule factor of 0 does
    before = _table(dmp).clone()
    _step(dmp, opt)
    assert torch.equal(_table(dmp), before), "LR 0 must freeze the fused table"
    schedule.step()  # the LambdaLR sets every group back to base LR x 1
    _step(dmp, opt)
    assert not torch.equal(_table(dmp), before)


def test_data_parallel_tables_are_trained_by_the_dense_optimizer(ctx):
    dmp, opt = _setup(ctx, "data_parallel")
    dense_keys = list(dict(opt.optimizers)["dense"].params)
    assert "sparse_arch.ebc.embedding_bags.t_a.weight" in dense_keys
    before = _table(dmp).clone()
    _step(dmp, opt)
    assert not torch.equal(_table(dmp), before)


def test_data_parallel_table_gradient_equals_nn_embedding_bag(ctx):
    """fbgemm's CPU lookup for replicated tables computes its own backward (torch flags it with an
    autograd warning that pipeline/cli/logs.py silences): the gradient must still be the plain one."""
    dmp, _ = _setup(ctx, "data_parallel")
    reference = build_model(from_dict(ModelConfig, _MODEL), INPUTS, ebc_device="cpu")
    reference.load_state_dict({k: v.detach().clone() for k, v in dmp.state_dict().items()})
    for model in (dmp, reference):
        model.zero_grad()
        model(_batch())[0].backward()
    grads = {n.replace("_dmp_wrapped_module.", "").replace("module.", ""): p.grad
             for n, p in dmp.named_parameters() if n.endswith("embedding_bags.t_a.weight")}
    (got,) = grads.values()
    want = reference.sparse_arch.ebc.embedding_bags["t_a"].weight.grad
    assert want is not None and want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


COSINE = LRScheduleConfig(name="cosine", warmup_steps=2, min_factor=0.1)


def _lrs(opt) -> list[float]:
    return [round(g["lr"], 6) for g in opt.param_groups]


def test_cosine_schedule_with_warmup_steps_like_a_lambda_lr():
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": 1.0},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1}])
    schedule = LRSchedule(opt, COSINE, total_steps=12)
    assert isinstance(schedule, torch.optim.lr_scheduler.LambdaLR)
    factors = []
    for _ in range(13):
        factors.append(round(schedule.factor, 3))
        assert _lrs(opt) == [round(f, 6) for f in (schedule.factor, 0.1 * schedule.factor)]
        opt.step()
        schedule.step()
    assert [factors[s] for s in (0, 1, 2, 7, 12)] == [0.5, 1.0, 1.0, 0.55, 0.1]
    assert factors == [round(lr_factor(COSINE, 12)(s), 3) for s in range(13)]


def test_schedule_built_at_a_resumed_step_continues_exactly():
    """What resuming does: the checkpoint's step alone positions a fresh schedule, base LRs from the config."""
    def run(steps: int, resume_at: int | None = None) -> list[list[float]]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        schedule = LRSchedule(opt, COSINE, total_steps=12)
        seen = []
        for step in range(steps):
            if step == resume_at:  # a new process: the same optimiser config, its LR not yet scheduled
                opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
                schedule = LRSchedule(opt, COSINE, total_steps=12, step=step)
            seen.append(_lrs(opt))
            opt.step()
            schedule.step()
        return seen
    assert run(12, resume_at=5) == run(12)
    assert run(12, resume_at=1) == run(12)


def test_gradient_clipping_bounds_the_dense_update(ctx):
    dmp, opt = _setup(ctx, "table_wise", grad_clip=1e-6)
    dense = dict(opt.optimizers)["dense"]
    opt.zero_grad()
    loss, _ = dmp(_batch())
    loss.backward()
    dense.step()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in dense.params.values() if p.grad is not None))
    assert norm <= 1e-6 * 1.01
