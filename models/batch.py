"""The multi-task batch: the contract between the data layer and the model.

It is `Pipelineable` so TorchRec's TrainPipelineSparseDist / EvalPipelineSparseDist can move it to
the device (`to`), pin it and record CUDA streams on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class MultiTaskBatch(Pipelineable):
    """One batch of B rows.

    dense:           [B, D_d] float32 (D_d may be 0)
    sparse_features: KeyedJaggedTensor of int64 ids, keys in InputSpec.sparse_keys order, stride B
    labels:          [B, T] float32 (binary labels in [0, 1], regression targets as is)
    masks:           [B, T] float32, 1 where the row belongs to task t's sample space (δ_ik)
    weights:         [B] float32 sample weights s_i (1 when the dataset has none; 0 for padding rows)
    keys:            [B] int64 row key (the dataset's `row_id`), carried for prediction write-back
    """

    dense: torch.Tensor
    sparse_features: KeyedJaggedTensor
    labels: torch.Tensor
    masks: torch.Tensor
    weights: torch.Tensor
    keys: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> "MultiTaskBatch":
        return MultiTaskBatch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            masks=self.masks.to(device=device, non_blocking=non_blocking),
            weights=self.weights.to(device=device, non_blocking=non_blocking),
            keys=None if self.keys is None else self.keys.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse_features.record_stream(stream)
        self.labels.record_stream(stream)
        self.masks.record_stream(stream)
        self.weights.record_stream(stream)
        if self.keys is not None:
            self.keys.record_stream(stream)

    def pin_memory(self) -> "MultiTaskBatch":
        return MultiTaskBatch(
            dense=self.dense.pin_memory(),
            sparse_features=self.sparse_features.pin_memory(),
            labels=self.labels.pin_memory(),
            masks=self.masks.pin_memory(),
            weights=self.weights.pin_memory(),
            keys=None if self.keys is None else self.keys.pin_memory(),
        )
