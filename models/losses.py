"""Losses (docs/MATH.md §6) and the DML mutual term (§5.2 GKD 3).

Per task k: L_k = sum_i d_ik s_i loss(l_ik, y_ik) / max(sum_i d_ik s_i, eps), and L_k = 0 when the
denominator is 0 (never NaN). Total: L = sum_k w_k [L_k(l_k) + 1_gkd L_k(g_k)] + sum_k lambda_k DML_k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GlobalLossNorm:
    """`loss_norm: global`: the training code injects a sum over ranks (models/ has no process
    group). Denominators are all-reduced; losses are multiplied by `world_size` to cancel DDP's
    gradient averaging, so every row of the global batch weighs the same."""

    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]
    world_size: int


class LossTerms(NamedTuple):
    """total: scalar to backprop. per_task: L_k(l_k) [T]. per_task_global: L_k(g_k) [T] or None.
    dml: DML_k [T] or None. per_task_total: task k's share of `total` [T] (sums to total)."""

    total: torch.Tensor
    per_task: torch.Tensor
    per_task_global: Optional[torch.Tensor]
    dml: Optional[torch.Tensor]
    per_task_total: torch.Tensor


def elementwise_loss(logits: torch.Tensor, labels: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """[B, T]: BCE-with-logits softplus(l) - y l for binary tasks (soft labels allowed), (l - y)^2
    for regression tasks. `binary`: [T] bool."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return torch.where(binary, bce, (logits - labels) ** 2)


def binary_kl(a_logit: torch.Tensor, b_logit: torch.Tensor) -> torch.Tensor:
    """KL_B(a || b) for a = sigmoid(a_logit), b = sigmoid(b_logit), from log-sigmoids (never log(sigmoid))."""
    a = torch.sigmoid(a_logit)
    return (a * (F.logsigmoid(a_logit) - F.logsigmoid(b_logit))
            + (1 - a) * (F.logsigmoid(-a_logit) - F.logsigmoid(-b_logit)))


def mutual_term(local: torch.Tensor, global_: torch.Tensor, binary: torch.Tensor, tau: float) -> torch.Tensor:
    """DML_k per row [B, T], symmetric, each side's target detached:
    binary tau^2 [KL_B(sg(q) || p) + KL_B(sg(p) || q)] with p = sigmoid(l/tau), q = sigmoid(g/tau);
    regression (sg(g) - l)^2 + (sg(l) - g)^2."""
    p, q = local / tau, global_ / tau
    kl = tau ** 2 * (binary_kl(q.detach(), p) + binary_kl(p.detach(), q))
    squared = (global_.detach() - local) ** 2 + (local.detach() - global_) ** 2
    return torch.where(binary, kl, squared)


class MultiTaskLoss(nn.Module):
    """Masked, sample-weighted per-task means and their weighted total.

    binary: task kinds (True = binary); task_weights: w_k; mutual_weights: lambda_k;
    global_label_loss / mutual: the GKD switches (only read when global logits are given).
    """

    def __init__(self, binary: Sequence[bool], task_weights: Sequence[float], mutual_weights: Sequence[float], *,
                 global_label_loss: bool = True, mutual: bool = True, tau: float = 1.0, eps: float = 1e-12,
                 global_norm: Optional[GlobalLossNorm] = None) -> None:
        super().__init__()
        self.register_buffer("binary", torch.tensor(list(binary), dtype=torch.bool), persistent=False)
        self.register_buffer("task_weights", torch.tensor(list(task_weights)), persistent=False)
        self.register_buffer("mutual_weights", torch.tensor(list(mutual_weights)), persistent=False)
        self.global_label_loss, self.mutual, self.tau, self.eps = global_label_loss, mutual, tau, eps
        self.global_norm = global_norm

    def forward(self, logits: torch.Tensor, global_logits: Optional[torch.Tensor], labels: torch.Tensor,
                masks: torch.Tensor, weights: torch.Tensor) -> LossTerms:
        row_weights = masks * weights.unsqueeze(1)  # d_ik s_i, [B, T]
        # Labels of rows outside a task's space may be anything (even NaN); zero them so that no
        # NaN reaches the sums or their gradients [project].
        labels = torch.where(row_weights > 0, labels, torch.zeros_like(labels))
        scale = self._scale(row_weights.sum(0))
        per_task = self._reduce(elementwise_loss(logits, labels, self.binary), row_weights, scale)
        per_task_total = self.task_weights * per_task
        per_task_global = dml = None
        if global_logits is not None:
            per_task_global = self._reduce(elementwise_loss(global_logits, labels, self.binary), row_weights, scale)
            if self.global_label_loss:
                per_task_total = per_task_total + self.task_weights * per_task_global
            dml = self._reduce(mutual_term(logits, global_logits, self.binary, self.tau), row_weights, scale)
            if self.mutual:
                per_task_total = per_task_total + self.mutual_weights * dml
        return LossTerms(per_task_total.sum(), per_task, per_task_global, dml, per_task_total)

    def _scale(self, denominator: torch.Tensor) -> torch.Tensor:
        """1 / max(denominator, eps) per task, 0 where the denominator is 0 ([T])."""
        world_size = 1
        if self.global_norm is not None:
            denominator = self.global_norm.all_reduce_sum(denominator)
            world_size = self.global_norm.world_size
        inverse = world_size / denominator.clamp_min(self.eps)
        return torch.where(denominator > 0, inverse, torch.zeros_like(inverse))

    @staticmethod
    def _reduce(values: torch.Tensor, row_weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (values * row_weights).sum(0) * scale
