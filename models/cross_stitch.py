"""Cross-stitch (docs/MATH.md §3.5; Cross-stitch networks; reference code `CrossStitch`).

c_k^0 = x. Level l: a_k^l = MLP_k^l(c_k^{l-1}) (one network per task, fused as an expert bank);
c_j^l = sum_k alpha_{jk}^l a_k^l with alpha^l in R^{T x T}, no bias. h_k = c_k^L.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from models.blocks import Backbone, BackboneOutput, ExpertBank


def stitch_matrix(num_tasks: int, init: str) -> torch.Tensor:
    """alpha^l at init. reference: nn.Linear(T, T) default, U(±1/sqrt(T)).
    near_identity [project]: 0.9 on the diagonal, 0.1/(T-1) elsewhere (rows sum to 1, close to the
    paper's convex initialisation); with T = 1 the single entry is 1."""
    if init == "reference":
        bound = 1.0 / math.sqrt(num_tasks)
        return torch.empty(num_tasks, num_tasks).uniform_(-bound, bound)
    if init == "near_identity":
        if num_tasks == 1:
            return torch.ones(1, 1)
        alpha = torch.full((num_tasks, num_tasks), 0.1 / (num_tasks - 1))
        return alpha.fill_diagonal_(0.9)
    raise ValueError(f"unknown stitch_init {init!r}")


class CrossStitch(Backbone):
    """x [B, D] -> hidden [B, T, D_L]; no gates (alpha is input-independent)."""

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], num_tasks: int,
                 stitch_init: str = "reference") -> None:
        super().__init__()
        own_rows = list(range(num_tasks))
        banks, d_in = [], input_dim
        for level, widths in enumerate(expert_out_dims):
            banks.append(ExpertBank(num_tasks, d_in, widths, None if level == 0 else own_rows))
            d_in = widths[-1]
        self.experts = nn.ModuleList(banks)
        self.stitch = nn.ParameterList(nn.Parameter(stitch_matrix(num_tasks, stitch_init)) for _ in banks)
        self.num_tasks = num_tasks
        self.out_dim = d_in

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        rows = x
        for bank, alpha in zip(self.experts, self.stitch):
            rows = torch.einsum("jk,kbd->jbd", alpha, bank(rows))  # [T, B, D_l]
        return BackboneOutput(rows.transpose(0, 1), None)
