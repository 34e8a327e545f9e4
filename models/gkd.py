"""Global Knowledge Distillation: docs/MATH.md §5.2, the project's interpretation of DML §2.4 ("DML
(mtrec design)") [project].

One global head per task reads its own tower's top hidden layer (or logit) plus the *detached* ones
of the other towers, u_k = [z_k; sg(z_j) for j != k, ascending j], and predicts task k again:
g_k = Linear(MLP_k(u_k), 1). The heads are fused as banks like the towers. The mutual (DML) term
between l_k and g_k lives in models/losses.py; the served head is chosen by `serve_logits`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from models.blocks import BankLinear, ExpertBank
from models.towers import TowerOutput


class GlobalHeads(nn.Module):
    """TowerOutput -> global logits g [B, T]. `source`: 'hidden' (z_k) or 'logit' (l_k)."""

    def __init__(self, num_tasks: int, d_z: int, mlp_widths: Sequence[int], *, source: str = "hidden",
                 stop_gradient: bool = True) -> None:
        super().__init__()
        self.source, self.stop_gradient = source, stop_gradient
        d_z = d_z if source == "hidden" else 1
        own_rows = list(range(num_tasks))
        self.mlp = ExpertBank(num_tasks, num_tasks * d_z, mlp_widths, own_rows) if mlp_widths else None
        self.head = BankLinear(num_tasks, mlp_widths[-1] if mlp_widths else num_tasks * d_z, 1, own_rows)
        others = [[j for j in range(num_tasks) if j != k] for k in range(num_tasks)]
        self.register_buffer("_others", torch.tensor(others, dtype=torch.long).view(num_tasks, num_tasks - 1),
                             persistent=False)

    def global_features(self, towers: TowerOutput) -> torch.Tensor:
        """u [B, T, T * d_z]: row k = [z_k ; sg(z_j) for j != k in ascending order]."""
        z = towers.hidden if self.source == "hidden" else towers.logits.unsqueeze(-1)
        others = (z.detach() if self.stop_gradient else z)[:, self._others]  # [B, T, T-1, d_z]
        return torch.cat([z.unsqueeze(2), others], dim=2).flatten(2)

    def forward(self, towers: TowerOutput) -> torch.Tensor:
        rows = self.global_features(towers).transpose(0, 1)  # [T, B, T * d_z]
        hidden = rows if self.mlp is None else self.mlp(rows)
        return self.head(hidden).squeeze(-1).transpose(0, 1)


def serve_logits(local: torch.Tensor, global_: torch.Tensor, binary: torch.Tensor, head: str) -> torch.Tensor:
    """The served head's logits [B, T] (docs/MATH.md §5.2 GKD 4). `mean` averages probabilities for
    binary tasks, returned as the exact logit of the mean (log-sum-exp form, finite for saturated
    inputs) [project], and values for regression tasks."""
    if head == "local":
        return local
    if head == "global":
        return global_
    mean_logit = (torch.logaddexp(F.logsigmoid(local), F.logsigmoid(global_))
                  - torch.logaddexp(F.logsigmoid(-local), F.logsigmoid(-global_)))
    return torch.where(binary, mean_logit, (local + global_) / 2)
