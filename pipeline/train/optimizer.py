"""Optimisers: the embedding optimiser fused into the backward pass, a dense optimiser for the
rest, one CombinedOptimizer over both, an LR schedule that drives both, and dense grad clipping.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
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


def lr_factor(cfg: LRScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier of training step `step` (0-based): linear warm-up over `warmup_steps`,
    then 1 (constant) or a cosine from 1 down to `min_factor` at `total_steps`."""
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        warmup = cfg.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class LRSchedule(LambdaLR):
    """torch's LambdaLR with `lr_factor`, over every param group of the combined optimiser: the
    dense one and the fused embedding one (its kernels read `param_groups[i]["lr"]` at each step).

    Its position is the training step: built at `step`, the LR is base × factor(step), and `.step()`
    after each training step moves it on. A checkpoint stores the step and not this object, so a
    resumed run builds it at the checkpoint's step; the base LRs always come from the config.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: LRScheduleConfig, total_steps: int,
                 step: int = 0) -> None:
        for group in optimizer.param_groups:  # LambdaLR records this itself only when starting at 0
            group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, lr_factor(cfg, total_steps), last_epoch=step - 1)

    @property
    def factor(self) -> float:
        """The multiplier of the step about to run."""
        return self.lr_lambdas[0](self.last_epoch)
