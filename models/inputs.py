"""What a model sees of a dataset: dense width, sparse id features and tasks.

`pipeline.data.schema.DatasetSchema.input_spec()` produces an `InputSpec`; models never read
schema files themselves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pooling = Literal["sum", "mean"]
TaskKind = Literal["binary", "regression"]


@dataclass(frozen=True)
class SparseFeature:
    """One id-list feature, embedded by its own table `t_<name>` of the EmbeddingBagCollection."""

    name: str
    num_embeddings: int
    embedding_dim: int
    pooling: Pooling = "sum"

    @property
    def table_name(self) -> str:
        return f"t_{self.name}"


@dataclass(frozen=True)
class Task:
    """One prediction target. `loss_weight` is w_k of docs/MATH.md §6."""

    name: str
    kind: TaskKind = "binary"
    loss_weight: float = 1.0


@dataclass(frozen=True)
class InputSpec:
    """dense_dim: width of batch.dense; sparse_features in KJT key order; tasks in label-column order."""

    dense_dim: int
    sparse_features: tuple[SparseFeature, ...]
    tasks: tuple[Task, ...]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def sparse_keys(self) -> list[str]:
        return [f.name for f in self.sparse_features]
