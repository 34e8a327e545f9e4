"""Multi-level MMoE (docs/MATH.md §3.3; reference code `MLMMoE`). MMoE is its one-level case (mmoe.py).

u_j^0 = x; level l: E_j^l = e_j^l(u_j^{l-1}), j = 1..n. On levels l < L, n gates make the next
level's rows, u_j^l = sum_i G_{j,i}^l(x) E_i^l; on level L, T gates make the task rows. Every gate
reads the raw input x, never the previous level.
"""
from __future__ import annotations

from typing import Sequence

import torch

from models.blocks import GatedFusionLevel, LevelStack


class MLMMoE(LevelStack):
    """x [B, D] -> hidden [B, T, D_L]; gates per level [B, n or T, n]."""

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], num_tasks: int,
                 num_experts: int, gate_bias: bool = True) -> None:
        levels, d_in = [], input_dim
        own_rows = list(range(num_experts))
        for level, widths in enumerate(expert_out_dims):
            num_gates = num_tasks if level == len(expert_out_dims) - 1 else num_experts
            levels.append(GatedFusionLevel(
                d_in, widths, num_experts,
                expert_rows=None if level == 0 else own_rows,  # expert j reads u_j (x on level 1)
                gate_in_dim=input_dim, gate_rows=None,  # every gate reads the shared x
                gate_experts=[None] * num_gates, gate_bias=gate_bias,
            ))
            d_in = widths[-1]
        super().__init__(levels, num_tasks)
        self.num_experts = num_experts

    def gate_input(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x
