"""Optimisers: the embedding optimiser fused into the backward pass, a dense optimiser for the
rest, one CombinedOptimizer over both, an LR schedule that drives both, and dense grad clipping.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from pipeline.config import DenseOptimizerConfig, LRScheduleConfig, SparseOptimizerConfig, TrainConfig

_SPARSE = {
    "rowwise_adagrad": (RowWiseAdagrad, lambda c: {"lr": c.lr, "eps": c.eps}),
    "adagrad": (torch.optim.Adagrad, lambda c: {"lr": c.lr, "eps": c.eps}),
    "sgd": (torch.optim.SGD, lambda c: {"lr": c.lr}),
}
_DENSE = {
    "adam": lambda ps, c: torch.optim.Adam(ps, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda ps, c: torch.optim.AdamW(ps, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda ps, c: torch.optim.SGD(ps, lr=c.lr, weight_decay=c.weight_decay),
    "adagrad": lambda ps, c: torch.optim.Adagrad(ps, lr=c.lr, weight_decay=c.weight_decay),
}


def fuse_sparse_optimizer(ebc: nn.Module, cfg: SparseOptimizerConfig) -> None:
    """Attach the embedding optimiser to the EBC's parameters before DMP wraps the model, so the
    sharded kernels apply it inside backward (the gradients are never materialised).
    `data_parallel` tables are not fused by TorchRec: they show up among the dense parameters and
    the dense optimiser trains them (docs/TRAINING.md)."""
    cls, kwargs = _SPARSE[cfg.name]
    apply_optimizer_in_backward(cls, ebc.parameters(), kwargs(cfg))


class _ClippingDenseOptimizer(KeyedOptimizerWrapper):
    """The dense optimiser, clipping the (already DDP-averaged) gradient norm right before its step:
    the train pipeline calls `step()` itself, so this is the one place between backward and update."""

    def __init__(self, params: dict[str, Any], cfg: DenseOptimizerConfig, max_norm: float | None) -> None:
        super().__init__(params, lambda ps: _DENSE[cfg.name](ps, cfg))
        self._max_norm = max_norm
        self._clip_params = [p for p in params.values() if isinstance(p, torch.Tensor)]

    def step(self, closure: Any = None) -> None:
        if self._max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._clip_params, self._max_norm)
        super().step(closure)


def build_optimizer(dmp: DistributedModelParallel, cfg: TrainConfig) -> CombinedOptimizer:
    """CombinedOptimizer([fused embedding optimiser, dense optimiser])."""
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense = _ClippingDenseOptimizer(dense_params, cfg.dense_optimizer, cfg.grad_clip_norm)
    return CombinedOptimizer([("sparse", dmp.fused_optimizer), ("dense", dense)])


def materialize_dense_state(optimizer: CombinedOptimizer) -> None:
    """Create the dense optimiser's lazy state (e.g. Adam moments) with one zero-gradient step, so
    a checkpoint can be loaded into it in place: DCP only fills keys the template already has, and
    a fresh Adam has none. The fused embedding optimiser's state exists from construction."""
    dict(optimizer.optimizers)["dense"].init_state()
    optimizer.zero_grad(set_to_none=True)


class LRSchedule:
    """Sets every param group's LR (dense and fused) to base_lr × factor(step).

    Stateless apart from the step, which the checkpoint stores, so resuming needs no extra state.
    The fused embedding kernels read `param_groups[0]["lr"]` at each zero_grad/step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: LRScheduleConfig, total_steps: int) -> None:
        self._groups = list(optimizer.param_groups)
        self._base = [g["lr"] for g in self._groups]
        self._cfg = cfg
        self._total = max(total_steps, 1)

    def factor(self, step: int) -> float:
        warmup = self._cfg.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self._cfg.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, self._total - warmup))
        floor = self._cfg.min_factor
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        f = self.factor(step)
        for group, base in zip(self._groups, self._base):
            group["lr"] = base * f
        return f
