"""Shared-bottom (docs/MATH.md §3.1): one MLP over the flattened expert widths, every task reads it."""
from __future__ import annotations

from typing import Sequence

import torch

from models.blocks import MLP, Backbone, BackboneOutput


class SharedBottom(Backbone):
    """x [B, D] -> hidden [B, T, D_L] with T identical rows (an expand, no copy); no gates."""

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], num_tasks: int) -> None:
        super().__init__()
        # Reference code: one MLP over the concatenated level widths, e.g. [[128],[64]] -> [128, 64].
        self.bottom = MLP(input_dim, [w for widths in expert_out_dims for w in widths])
        self.num_tasks = num_tasks
        self.out_dim = self.bottom.out_dim

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(self.bottom(x).unsqueeze(1).expand(-1, self.num_tasks, -1), None)
