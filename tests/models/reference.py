"""Naive per-expert / per-gate implementations of docs/MATH.md §3, written from the equations.

They read the fused modules' weights slice by slice (expert e of a bank = slice e of every layer;
gate m = its slot in the gate bank), so a fused-vs-naive comparison checks routing, ordering and
fusion, not initialisation. Every loop here is deliberately plain Python over experts and gates.
"""
from __future__ import annotations

import torch

from models.blocks import ExpertBank, GateBank


def expert(bank: ExpertBank, e: int, u: torch.Tensor) -> torch.Tensor:
    """Expert e of the bank applied to u [B, d]: Linear -> ReLU per layer."""
    for layer in bank.layers:
        u = torch.relu(u @ layer.weight[e] + layer.bias[e])
    return u


def gate(bank: GateBank, m: int, u: torch.Tensor) -> torch.Tensor:
    """Gate m applied to u [B, d]: softmax over its own span (width = len(span)), [B, len(span)]."""
    for group, linear in zip(bank.groups, bank.banks):
        if m in group:
            slot = group.index(m)
            logits = u @ linear.weight[slot]
            if linear.bias is not None:
                logits = logits + linear.bias[slot]
            return torch.softmax(logits, dim=-1)
    raise KeyError(m)


def mix(weights: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """sum_i weights[:, i] * experts[i]."""
    return sum(weights[:, i : i + 1] * e for i, e in enumerate(experts))


def shared_bottom(model, x: torch.Tensor) -> torch.Tensor:
    h = x
    for layer in model.bottom:
        h = layer(h)
    return torch.stack([h] * model.num_tasks, dim=1)


def ml_mmoe(model, x: torch.Tensor) -> torch.Tensor:
    """§3.3: u_j^0 = x; E_j = e_j(u_j); gates read raw x; levels < L make n rows, level L makes T."""
    n = model.num_experts
    u = [x] * n
    for level in model.levels:
        experts = [expert(level.experts, j, u[j]) for j in range(n)]
        u = [mix(gate(level.gates, k, x), experts) for k in range(level.num_gates)]
    return torch.stack(u, dim=1)


def ple(model, x: torch.Tensor) -> torch.Tensor:
    """§3.4: task rows s_k and shared row s_s; task gate k over its own + the shared experts; shared
    gate (levels < L only) over all experts."""
    T = model.num_tasks
    owner = [k for k in range(T) for _ in range(model.task_experts[k])] + [T] * model.num_shared_experts
    shared = [e for e, row in enumerate(owner) if row == T]
    s = [x] * (T + 1)
    for level in model.levels:
        experts = [expert(level.experts, e, s[row]) for e, row in enumerate(owner)]
        new = []
        for k in range(T):
            span = [e for e, row in enumerate(owner) if row == k] + shared
            new.append(mix(gate(level.gates, k, s[k]), [experts[e] for e in span]))
        if level.num_gates == T + 1:
            new.append(mix(gate(level.gates, T, s[T]), experts))
        s = new
    return torch.stack(s[:T], dim=1)


def adatt(model, x: torch.Tensor, module_experts: list[int], residual) -> torch.Tensor:
    """§3.6 / §3.7 eqs 7-9: f_i = sum_e G_ie E_e + sum_j v_ij E_ij (E_ij: module i's own experts),
    every gate over all experts, module i's experts and gate reading f_i.

    residual(level, module) -> None (no residual) or the module's native weights (a sequence).
    """
    owner = [i for i, count in enumerate(module_experts) for _ in range(count)]
    rows = [x] * len(module_experts)
    for l, level in enumerate(model.levels):
        experts = [expert(level.experts, e, rows[i]) for e, i in enumerate(owner)]
        new = []
        for i in range(level.num_gates):
            f = mix(gate(level.gates, i, rows[i]), experts)
            v = residual(l, i)
            if v is not None:
                own = [e for e, row in enumerate(owner) if row == i]
                f = f + sum(w * experts[e] for w, e in zip(v, own))
            new.append(f)
        rows = new
    return torch.stack(rows, dim=1)


def cross_stitch(model, x: torch.Tensor) -> torch.Tensor:
    """§3.5: a_k = MLP_k(c_k); c_j = sum_k alpha_jk a_k."""
    T = model.num_tasks
    c = [x] * T
    for bank, alpha in zip(model.experts, model.stitch):
        a = [expert(bank, k, c[k]) for k in range(T)]
        c = [sum(alpha[j, k] * a[k] for k in range(T)) for j in range(T)]
    return torch.stack(c, dim=1)
