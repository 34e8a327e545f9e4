"""AdaTT (docs/MATH.md §3.6-3.7; AdaTT §3; reference code `AdaTTSp`, `AdaTTWSharedExps`).

Both variants fuse every level in the eq-11 form f_i^l = (G_i^l + pad_i(v_i^l)) . E^l: the gates'
softmax rows plus the padded native-expert weights, then one matmul over all experts of the level.
The padded residual is built by one scatter of the native weights into an [M, E] matrix.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from models.blocks import GatedFusionLevel, LevelStack


def native_weight(*shape: int) -> nn.Parameter:
    """Learned native-expert weights [..., m], init U(±sqrt(1/m)) (AdaTT eq 8, reference init)."""
    scale = math.sqrt(1.0 / shape[-1])
    return nn.Parameter(torch.empty(*shape).uniform_(-scale, scale))


def pad_positions(module_experts: Sequence[int], num_active: int) -> torch.Tensor:
    """Flat positions in an [M, E] matrix (M = num_active gated modules) of each active module's own
    experts: module i's j-th expert sits at row i, column offset_i + j (task-major bank order)."""
    num_experts = sum(module_experts)
    positions, offset = [], 0
    for module, count in enumerate(module_experts):
        if module < num_active:
            positions += [module * num_experts + offset + j for j in range(count)]
        offset += count
    return torch.tensor(positions, dtype=torch.long)


def native_residual(values: torch.Tensor, positions: torch.Tensor, num_gates: int, num_experts: int) -> torch.Tensor:
    """pad(v) of eq 11 for all gated modules at once: [M, E], zero outside each module's own experts."""
    flat = values.new_zeros(num_gates * num_experts).scatter(0, positions, values)
    return flat.view(num_gates, num_experts)


class AdaTTSp(LevelStack):
    """AdaTT-sp (§3.6): T task units of m experts each, no shared unit.

    Expert i of task t sits at bank index t*m + i; task t's gate reads f_t^{l-1} and spans all T*m
    experts. Native residual (`self_exp_res_connect`): m > 1 learns v^l in R^{T x m} per level
    (parameter `native_weights`, [L, T, m]); m = 1 adds the native expert with unit weight and has no
    v parameter.
    """

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], num_tasks: int,
                 num_task_experts: int, self_exp_res_connect: bool = True, gate_bias: bool = True) -> None:
        m, num_experts = num_task_experts, num_tasks * num_task_experts
        expert_rows = [e // m for e in range(num_experts)]
        levels, d_in = [], input_dim
        for level, widths in enumerate(expert_out_dims):
            levels.append(GatedFusionLevel(
                d_in, widths, num_experts, expert_rows=None if level == 0 else expert_rows,
                gate_in_dim=d_in, gate_rows=None if level == 0 else list(range(num_tasks)),
                gate_experts=[None] * num_tasks, gate_bias=gate_bias,
            ))
            d_in = widths[-1]
        super().__init__(levels, num_tasks)
        self.num_task_experts = m
        self.self_exp_res_connect = self_exp_res_connect
        self.learned_native = self_exp_res_connect and m > 1
        if self.learned_native:
            self.native_weights = native_weight(len(levels), num_tasks, m)  # v^l = native_weights[l]
        self.register_buffer("_pad_positions", pad_positions([m] * num_tasks, num_tasks), persistent=False)

    def residual(self, level: int, ref: torch.Tensor) -> torch.Tensor | None:
        if not self.self_exp_res_connect:
            return None
        if self.learned_native:
            values = self.native_weights[level].reshape(-1)
        else:  # m = 1: unit weight, created on the input's device and dtype
            values = ref.new_ones(self.num_tasks)
        return native_residual(values, self._pad_positions, self.num_tasks, self.num_tasks * self.num_task_experts)


class AdaTTGeneral(LevelStack):
    """AdaTT-general (§3.7): T task units (m_t experts each) + one shared unit (m_s >= 1 experts).

    Rows: T task rows then the shared row (all x on level 1). Every active module's gate spans all
    experts. Levels < L gate T + 1 modules; on level L the shared unit has no gate and no residual,
    its experts only feed the task gates. Native residual: when every module (shared included) has
    exactly one expert it is the constant 1; otherwise module i learns V_i in R^{L_i x m_i}
    (parameters `native_weights.i`; L_i = L for task units, L - 1 for the shared unit, which gets no
    parameter when L = 1 [project: an empty parameter would never receive a gradient, which DDP
    rejects]); a module with m_i = 1 then learns a scalar initialised U(-1, 1) (reference behaviour).
    """

    def __init__(self, input_dim: int, expert_out_dims: Sequence[Sequence[int]], task_experts: Sequence[int],
                 num_shared_experts: int, self_exp_res_connect: bool = True, gate_bias: bool = True) -> None:
        if num_shared_experts < 1:
            raise ValueError("AdaTTGeneral needs >= 1 shared expert; m_s = 0 is AdaTTSp")
        num_tasks = len(task_experts)
        module_experts = list(task_experts) + [num_shared_experts]
        num_experts = sum(module_experts)
        expert_rows = [i for i, m in enumerate(module_experts) for _ in range(m)]
        num_levels = len(expert_out_dims)
        levels, d_in = [], input_dim
        for level, widths in enumerate(expert_out_dims):
            num_gates = num_tasks if level == num_levels - 1 else num_tasks + 1
            levels.append(GatedFusionLevel(
                d_in, widths, num_experts, expert_rows=None if level == 0 else expert_rows,
                gate_in_dim=d_in, gate_rows=None if level == 0 else list(range(num_gates)),
                gate_experts=[None] * num_gates, gate_bias=gate_bias,
            ))
            d_in = widths[-1]
        super().__init__(levels, num_tasks)
        self.module_experts = module_experts
        self.self_exp_res_connect = self_exp_res_connect
        self.unit_native = all(m == 1 for m in module_experts)
        if self_exp_res_connect and not self.unit_native:
            rows = [num_levels] * num_tasks + [num_levels - 1]
            self.native_weights = nn.ParameterList(
                native_weight(r, m) for r, m in zip(rows, module_experts) if r > 0)
        for level, stage in enumerate(self.levels):
            self.register_buffer(f"_pad_positions{level}", pad_positions(module_experts, stage.num_gates),
                                 persistent=False)

    def residual(self, level: int, ref: torch.Tensor) -> torch.Tensor | None:
        if not self.self_exp_res_connect:
            return None
        num_gates = self.levels[level].num_gates
        if self.unit_native:  # constant 1, created on the input's device and dtype
            values = ref.new_ones(num_gates)
        else:  # modules 0..num_gates-1 are the active ones: the shared unit's V is last
            values = torch.cat([self.native_weights[i][level] for i in range(num_gates)])
        return native_residual(values, getattr(self, f"_pad_positions{level}"), num_gates, sum(self.module_experts))
