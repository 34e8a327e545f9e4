"""Task towers (docs/MATH.md §4): z_k = MLP_k(h'_k), l_k = Linear(dim z_k, 1)(z_k), no activation.

The T towers are fused as banks (slice k of each parameter is tower k, initialised like its own
nn.Linear), so the towers cost one batched matmul per layer whatever T is [project].
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from models.blocks import BankLinear, ExpertBank


class TowerOutput(NamedTuple):
    """logits: [B, T] (values for regression tasks); hidden: [B, T, d_z], each tower's top hidden
    layer z_k (= its input when `tower_mlp` is empty)."""

    logits: torch.Tensor
    hidden: torch.Tensor


class TaskTowers(nn.Module):
    """h' [B, T, d_in] -> TowerOutput. An empty `tower_mlp` is allowed (z_k = h'_k) [project]."""

    def __init__(self, d_in: int, tower_mlp: Sequence[int], num_tasks: int) -> None:
        super().__init__()
        own_rows = list(range(num_tasks))
        self.mlp = ExpertBank(num_tasks, d_in, tower_mlp, own_rows) if tower_mlp else None
        self.hidden_dim = tower_mlp[-1] if tower_mlp else d_in
        self.head = BankLinear(num_tasks, self.hidden_dim, 1, own_rows)

    def forward(self, h: torch.Tensor) -> TowerOutput:
        rows = h.transpose(0, 1)  # [T, B, d_in]
        z = rows if self.mlp is None else self.mlp(rows)
        logits = self.head(z).squeeze(-1).transpose(0, 1)  # [B, T]
        return TowerOutput(logits, z.transpose(0, 1))
