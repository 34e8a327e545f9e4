"""MMoE (docs/MATH.md §3.2, MMoE eq 8): ML-MMoE with one level (one code path, ml_mmoe.py).

e_i = MLP(D, arch)(x), i = 1..n; g_k = Gate_k(x) in R^n; h_k = sum_i g_{k,i} e_i. Multi-layer
experts are one level, e.g. expert_out_dims [[256, 128]].
"""
from __future__ import annotations

from typing import Sequence

from models.ml_mmoe import MLMMoE


class MMoE(MLMMoE):
    """x [B, D] -> hidden [B, T, D_1]; one gate level [B, T, n]."""

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], num_tasks: int,
                 num_experts: int, gate_bias: bool = True) -> None:
        if len(expert_out_dims) != 1:
            raise ValueError(f"MMoE has one level; got {len(expert_out_dims)} (use MLMMoE)")
        super().__init__(input_dim, expert_out_dims, num_tasks, num_experts, gate_bias)
