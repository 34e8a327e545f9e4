"""CGC and PLE (docs/MATH.md §3.4; PLE §4.1-4.2, eqs 2-7; reference code `PLE`).

Rows: T task rows then the shared row, all x on level 1. Level l experts: task k's m_k experts read
s_k^{l-1}, the m_s shared experts read s_s^{l-1}; bank order task 1 .. task T, then shared.
Task gate k reads s_k^{l-1} and spans its own + the shared experts; the shared gate (levels < L
only, the last-level rule) reads s_s^{l-1} and spans all experts. h_k = s_k^L. CGC = PLE, L = 1.
"""
from __future__ import annotations

from typing import Sequence

from models.blocks import GatedFusionLevel, LevelStack


class PLE(LevelStack):
    """x [B, D] -> hidden [B, T, D_L]. `task_experts`: m_k per task; `num_shared_experts`: m_s.

    m_s = 0 (allowed by config only for CGC) gives task gates over their own experts only, which
    avoids the reference code's `[-0:]` slice selecting every expert (docs/MATH.md §3.4).
    """

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], task_experts: Sequence[int],
                 num_shared_experts: int, gate_bias: bool = True) -> None:
        num_tasks = len(task_experts)
        num_experts = sum(task_experts) + num_shared_experts
        expert_rows = [k for k, m in enumerate(task_experts) for _ in range(m)] + [num_tasks] * num_shared_experts
        shared = list(range(sum(task_experts), num_experts))
        task_spans = [[e for e, row in enumerate(expert_rows) if row == k] + shared for k in range(num_tasks)]
        levels, d_in = [], input_dim
        for level, widths in enumerate(expert_out_dims):
            last = level == len(expert_out_dims) - 1
            spans = task_spans if last else task_spans + [None]  # no shared gate on level L
            levels.append(GatedFusionLevel(
                d_in, widths, num_experts,
                expert_rows=None if level == 0 else expert_rows,
                gate_in_dim=d_in, gate_rows=None if level == 0 else list(range(len(spans))),
                gate_experts=spans, gate_bias=gate_bias,
            ))
            d_in = widths[-1]
        super().__init__(levels, num_tasks)
        self.task_experts = list(task_experts)
        self.num_shared_experts = num_shared_experts


class CGC(PLE):
    """Customized Gate Control: PLE with one level (no shared gate at all)."""

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], task_experts: Sequence[int],
                 num_shared_experts: int, gate_bias: bool = True) -> None:
        if len(expert_out_dims) != 1:
            raise ValueError(f"CGC has one level; got {len(expert_out_dims)} (use PLE)")
        super().__init__(input_dim, expert_out_dims, task_experts, num_shared_experts, gate_bias)
