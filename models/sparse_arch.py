"""Sparse arch (docs/MATH.md §1.1): the model's only EmbeddingBagCollection, one table per sparse feature.

Tables are named `t_<feature>` (SparseFeature.table_name), in InputSpec order, and the pooled output
`[B, sum_f D_f]` has one block per feature in InputSpec order, whatever the sharding plan: a sharded
EBC returns its KeyedTensor's keys grouped by sharding (table-wise: by rank), so `.values()` alone
would hand the dense side a column order that depends on the plan and world size, and a model
trained under one plan would read permuted embeddings under another. `KeyedTensor.regroup` puts the
blocks back in the fixed order. The EBC is built on device "meta" for
DistributedModelParallel to shard and materialise, or on "cpu" for unsharded use (tests, tools).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from models.config import EmbeddingConfig, TableInitConfig
from models.inputs import InputSpec

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
_DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}


def table_init_kwargs(init: TableInitConfig) -> dict[str, Any]:
    """EmbeddingBagConfig init arguments. default: TorchRec's U(±sqrt(1/num_embeddings));
    uniform: U(-scale, scale) via weight_init_min/max (honoured by every TorchRec kernel);
    normal: N(0, scale^2) via init_fn, which sharded EBCs apply when DMP materialises a table
    (torch.nn.init.normal_ also works on ShardedTensor)."""
    if init.init == "uniform":
        return {"weight_init_min": -init.scale, "weight_init_max": init.scale}
    if init.init == "normal":
        return {"init_fn": partial(torch.nn.init.normal_, mean=0.0, std=init.scale)}
    return {}


def embedding_tables(inputs: InputSpec, cfg: EmbeddingConfig) -> list[EmbeddingBagConfig]:
    """One EmbeddingBagConfig per sparse feature; `cfg.dim` (if set) overrides the schema's dims.
    `cfg.data_type` fp16 halves the tables' weights; fbgemm's fused kernels (CPU and CUDA) look up
    and update fp16 rows (the row-wise Adagrad state stays fp32) and pool into fp32 outputs."""
    return [
        EmbeddingBagConfig(
            name=f.table_name,
            num_embeddings=f.num_embeddings,
            embedding_dim=cfg.dim or f.embedding_dim,
            feature_names=[f.name],
            pooling=_POOLING[f.pooling],
            data_type=_DATA_TYPES[cfg.data_type],
            **table_init_kwargs(cfg.table_init(f.table_name)),
        )
        for f in inputs.sparse_features
    ]


class SparseArch(nn.Module):
    """KJT (keys = InputSpec.sparse_keys, stride B) -> pooled embeddings [B, sum_f D_f]."""

    def __init__(self, inputs: InputSpec, cfg: EmbeddingConfig, device: str = "meta") -> None:
        super().__init__()
        tables = embedding_tables(inputs, cfg)
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))
        self.out_dim = sum(t.embedding_dim for t in tables)
        self.feature_order = [name for t in tables for name in t.feature_names]

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return KeyedTensor.regroup([self.ebc(features)], [self.feature_order])[0]
