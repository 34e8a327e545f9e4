"""The top-level multi-task model: shared input -> backbone -> [CTFM] -> towers -> [GKD] -> loss.

Follows TorchRec's train-pipeline contract (docs/STACK.md §3.1): forward(batch) -> (loss, outputs),
`batch.sparse_features` goes straight to the EBC by plain attribute access, and the top-level
forward is FX-traceable (submodules without an EBC are leaves for TorchRec's tracer), with no
data-dependent Python control flow.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx
from torch import nn

from models.batch import MultiTaskBatch
from models.blocks import Backbone
from models.ctfm import CTFM
from models.gkd import GlobalHeads, serve_logits
from models.losses import LossTerms, MultiTaskLoss
from models.sparse_arch import SparseArch
from models.towers import TaskTowers


class MultiTaskModel(nn.Module):
    """Attributes: `sparse_arch` (holds `.ebc`, the only EmbeddingBagCollection; None for dense-only
    inputs), `dense_arch` (the optional dense MLP, identity by default), `backbone`, `towers`,
    `ctfm` and `gkd` (None when off), `loss_fn`.

    forward(batch) -> (loss scalar, outputs) with outputs (all detached, [B, T] unless noted):
      loss_per_task [T] (L_k of the local towers), logits (served head; pre-sigmoid for binary tasks,
      values for regression), predictions (served head: sigmoid probabilities / values), labels,
      masks, weights [B]; with GKD also logits_local,
      logits_global, predictions_local, predictions_global, loss_per_task_global [T], dml_per_task [T].
    """

    def __init__(self, sparse_arch: Optional[SparseArch], dense_arch: nn.Module, backbone: Backbone,
                 towers: TaskTowers, loss_fn: MultiTaskLoss, *, ctfm: Optional[CTFM] = None,
                 gkd: Optional[GlobalHeads] = None, serve_head: str = "global") -> None:
        super().__init__()
        self.sparse_arch = sparse_arch
        self.dense_arch = dense_arch
        self.backbone = backbone
        self.towers = towers
        self.ctfm = ctfm
        self.gkd = gkd
        self.loss_fn = loss_fn
        self.serve_head = serve_head

    def shared_input(self, batch: MultiTaskBatch) -> torch.Tensor:
        """x [B, D] = concat(pooled sparse embeddings, dense') (docs/MATH.md §1.4; sparse first)."""
        dense = self.dense_arch(batch.dense)
        if self.sparse_arch is None:
            return dense
        return torch.cat([self.sparse_arch(batch.sparse_features), dense], dim=1)

    def forward(self, batch: MultiTaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hidden = self.backbone(self.shared_input(batch)).hidden
        if self.ctfm is not None:
            hidden = self.ctfm(hidden)
        towers = self.towers(hidden)
        global_logits = None if self.gkd is None else self.gkd(towers)
        terms = self.loss_fn(towers.logits, global_logits, batch.labels, batch.masks, batch.weights)
        return terms.total, self._outputs(towers.logits, global_logits, terms, batch)

    def _outputs(self, logits: torch.Tensor, global_logits: Optional[torch.Tensor], terms: LossTerms,
                 batch: MultiTaskBatch) -> dict[str, torch.Tensor]:
        binary = self.loss_fn.binary
        logits = logits.detach()
        outputs = {"loss_per_task": terms.per_task.detach(), "labels": batch.labels, "masks": batch.masks,
                   "weights": batch.weights}
        keys = row_keys(batch)
        if keys is not None:  # row keys for prediction write-back
            outputs["keys"] = keys
        if global_logits is None:
            outputs["logits"] = logits
        else:
            global_logits = global_logits.detach()
            outputs["logits"] = serve_logits(logits, global_logits, binary, self.serve_head)
            outputs.update(logits_local=logits, logits_global=global_logits,
                           predictions_local=predictions(logits, binary),
                           predictions_global=predictions(global_logits, binary),
                           loss_per_task_global=terms.per_task_global.detach(), dml_per_task=terms.dml.detach())
        outputs["predictions"] = predictions(outputs["logits"], binary)
        return outputs

    @torch.no_grad()
    def gate_weights(self, batch: MultiTaskBatch) -> list[torch.Tensor]:
        """Diagnostics, off the training path: per level, the batch-mean gate weights [M, E] (rows sum
        to 1; before AdaTT's native residual). Empty for backbones without gates."""
        gates = self.backbone(self.shared_input(batch)).gates
        return [] if gates is None else [g.mean(0) for g in gates]


@torch.fx.wrap
def row_keys(batch: MultiTaskBatch) -> Optional[torch.Tensor]:
    """batch.keys, as one opaque call under FX tracing: on a tracing Proxy `.keys` is Proxy's own
    `keys()` method, not an attribute of the batch."""
    return batch.keys


def predictions(logits: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """Sigmoid probabilities for binary tasks, the values themselves for regression tasks ([B, T])."""
    return torch.where(binary, torch.sigmoid(logits), logits)
