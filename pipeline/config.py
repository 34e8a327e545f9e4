"""The job config: one YAML file per experiment (configs/*.yaml), validated into typed dataclasses.

Sections: `model` (models.config.ModelConfig), `train`, `data`, `sharding`, `eval`. Unknown keys and
impossible values are a ConfigError naming the key path at start-up, never a crash mid-training.
`key=value` overrides (values parsed as YAML) are applied before validation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from models.config import ModelConfig
from models.typed_config import ConfigError, from_dict, to_dict

# Sharding types the CPU/gloo planner can serve; row-wise variants need GPUs (docs/STACK.md §2).
CPU_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")
GPU_ONLY_SHARDING_TYPES = ("row_wise", "table_row_wise", "grid_shard")


@dataclass(frozen=True)
class DenseOptimizerConfig:
    name: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def validate(self, path: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")


@dataclass(frozen=True)
class SparseOptimizerConfig:
    """Fused into the embedding backward (TorchRec apply_optimizer_in_backward). CPU kernels offer
    SGD, Adagrad and row-wise Adagrad only (fbgemm rejects Adam on CPU)."""

    name: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8

    def validate(self, path: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")


@dataclass(frozen=True)
class LRScheduleConfig:
    """Multiplier on both optimisers' base LR: linear warm-up, then constant or cosine decay."""

    name: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_factor: float = 0.0


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop when `task`'s validation `metric` has not improved for `patience` validations."""

    task: Optional[str] = None  # None = early stopping off
    metric: Literal["auc", "ne", "logloss"] = "auc"
    patience: int = 2


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 1
    max_steps: Optional[int] = None  # a step budget; stops before `epochs` when reached
    batch_size: int = 1024  # per rank
    dense_optimizer: DenseOptimizerConfig = field(default_factory=DenseOptimizerConfig)
    sparse_optimizer: SparseOptimizerConfig = field(default_factory=SparseOptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    grad_clip_norm: Optional[float] = None  # dense parameters only (fused grads never materialise)
    validate_every_steps: Optional[int] = None  # None = at the end of each epoch
    validation_max_batches: Optional[int] = None  # None = the whole validation split
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint_every_steps: Optional[int] = None  # None = at each validation and at the end
    keep_last_checkpoints: int = 2
    log_every_steps: int = 50

    def validate(self, path: str) -> None:
        for name in ("epochs", "batch_size", "keep_last_checkpoints", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "validate_every_steps", "checkpoint_every_steps", "validation_max_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{path}.{name}: must be >= 1 or null, got {value}")


@dataclass(frozen=True)
class DataConfig:
    num_workers: int = 1  # DataLoader workers per rank
    shuffle_buffer_rows: int = 65536
    read_ahead: int = 2

    def validate(self, path: str) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"{path}.num_workers: must be >= 0")


@dataclass(frozen=True)
class TableShardingConfig:
    sharding_types: tuple[str, ...] = ()  # empty = let the planner choose among those allowed
    compute_kernels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardingConfig:
    """Per-table planner constraints; `tables` is keyed by table name (`t_<feature>`)."""

    default: TableShardingConfig = field(default_factory=TableShardingConfig)
    tables: dict[str, TableShardingConfig] = field(default_factory=dict)

    def for_table(self, table: str) -> TableShardingConfig:
        return self.tables.get(table, self.default)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 8192
    auc_mode: Literal["bounded", "exact"] = "bounded"


@dataclass(frozen=True)
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with `a.b.c=value` overrides applied (value parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def load_job_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a job YAML. Errors name the file and the key path."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return from_dict(JobConfig, apply_overrides(raw, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_job_config(cfg: JobConfig) -> str:
    """The resolved config as YAML (written next to every run)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
