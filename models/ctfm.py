"""Cross Task Feature Mining: docs/MATH.md §5.2, the project's interpretation of DML §2.3 ("DML (mtrec
design)", not claimed equation-identical to the paper) [project].

One module shared by all towers, at the tower entry. Tower k queries the other towers' inputs with
task embeddings; their keys and values use detached inputs, so task k's loss never reaches another
tower's input (d L_k / d h_j = 0 for j != k), while W_Q, W_K, W_V and the task embeddings are trained
by every task.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class CTFM(nn.Module):
    """H [B, T, D_L] -> H' [B, T, D_L + d_v] (merge=concat) or [B, T, D_L] (merge=add, d_v = D_L).

    q_k = W_Q [h_k; e_k]; kappa_j = W_K [sg(h_j); e_j]; nu_j = W_V sg(h_j) for j != k (and j = k with
    the non-detached h_k when include_self); a_k = softmax_j(q_k . kappa_j / sqrt(d_a)); c_k = sum_j a_kj nu_j.
    """

    def __init__(self, num_tasks: int, d_in: int, d_e: int, d_a: int, d_v: int, *, stop_gradient: bool = True,
                 include_self: bool = False, merge: str = "concat", zero_init_value: bool = False) -> None:
        super().__init__()
        if num_tasks == 1 and not include_self:
            raise ValueError("CTFM with one task needs include_self=True (the key set would be empty)")
        if merge == "add" and d_v != d_in:
            raise ValueError(f"CTFM merge='add' needs d_v == D_L ({d_in}), got {d_v}")
        self.task_embeddings = nn.Parameter(torch.randn(num_tasks, d_e) / math.sqrt(d_e))  # N(0, 1/d_e)
        self.query = nn.Linear(d_in + d_e, d_a, bias=False)
        self.key = nn.Linear(d_in + d_e, d_a, bias=False)
        self.value = nn.Linear(d_in, d_v, bias=False)
        if zero_init_value:  # c_k = 0 at init: the model starts as the bare backbone
            nn.init.zeros_(self.value.weight)
        self.stop_gradient, self.include_self, self.merge = stop_gradient, include_self, merge
        self.scale = 1.0 / math.sqrt(d_a)
        self.out_dim = d_in + d_v if merge == "concat" else d_in
        self.register_buffer("_diagonal", torch.eye(num_tasks, dtype=torch.bool), persistent=False)

    def attend(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (c [B, T, d_v], attention [B, T(query k), T(key j)], rows summing to 1)."""
        emb = self.task_embeddings.expand(h.shape[0], -1, -1)
        others = h.detach() if self.stop_gradient else h
        q = self.query(torch.cat([h, emb], dim=-1))
        scores = q @ self.key(torch.cat([others, emb], dim=-1)).transpose(1, 2) * self.scale
        values = self.value(others)
        if not self.include_self:
            attention = torch.softmax(scores.masked_fill(self._diagonal, float("-inf")), dim=-1)
            return attention @ values, attention
        # Own tower (j = k) keeps its gradient: its key and value come from the non-detached h_k.
        own_scores = (q * self.key(torch.cat([h, emb], dim=-1))).sum(-1) * self.scale  # [B, T]
        scores = torch.where(self._diagonal, own_scores.unsqueeze(-1), scores)
        attention = torch.softmax(scores, dim=-1)
        off_diagonal = attention.masked_fill(self._diagonal, 0.0)
        own_weight = torch.diagonal(attention, dim1=1, dim2=2).unsqueeze(-1)  # [B, T, 1]
        return off_diagonal @ values + own_weight * self.value(h), attention

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        context, _ = self.attend(h)
        return torch.cat([h, context], dim=-1) if self.merge == "concat" else h + context
