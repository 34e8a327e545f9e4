"""The job config: one YAML file per experiment (configs/*.yaml), validated into typed dataclasses.

Sections: `model` (models.config.ModelConfig), `train`, `data`, `sharding`, `eval`. Unknown keys and
impossible values are a ConfigError naming the key path at start-up, never a crash mid-training.
A file may start from another one (`extends: recipes/census.yaml`, relative to the file; chains
allowed): mappings are merged key by key, anything else (lists included) is replaced. `key=value`
overrides (values parsed as YAML) are applied to the merged mapping before validation.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

from models.config import ModelConfig
from models.typed_config import ConfigError, dump_yaml, from_dict, parse_yaml, to_dict

EXTENDS = "extends"  # top-level key: the path of the base config, relative to this file
MAX_STEPS_ENV = "MTREC_MAX_STEPS"  # caps train.max_steps of `mtrec train` (docs/TRAINING.md)

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


MEAN_OF_TASKS = "mean"


@dataclass(frozen=True)
class WatchedMetric:
    """A validation metric of one task, or `task: mean` for its mean over the tasks that have it
    (docs/TRAINING.md). `task: null` watches nothing."""

    task: Optional[str] = None
    metric: Literal["auc", "ne", "logloss"] = "auc"

    def score(self, tasks: dict[str, dict[str, Any]]) -> Optional[float]:
        """The watched value of one validation's {task: {metric: value}} (None when undefined)."""
        if self.task != MEAN_OF_TASKS:
            return tasks[self.task][self.metric]
        values = [m[self.metric] for m in tasks.values() if m.get(self.metric) is not None]
        return sum(values) / len(values) if values else None

    def better(self, score: Optional[float], best: Optional[float]) -> bool:
        """Whether `score` improves on `best` (AUC: higher; NE and log loss: lower)."""
        if score is None:
            return False
        return best is None or (score > best if self.metric == "auc" else score < best)


@dataclass(frozen=True)
class EarlyStoppingConfig(WatchedMetric):
    """Stop when the watched validation metric has not improved for `patience` validations
    (`task: null` = early stopping off)."""

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
    # RUN/checkpoints/best follows the early-stopping metric; without early stopping, this one
    # (task null and no early stopping: no best checkpoint, scoring uses the latest).
    best_checkpoint: WatchedMetric = field(default_factory=WatchedMetric)
    # Dense-side compute: fp32, or bf16 autocast with fp32 master weights (docs/TRAINING.md).
    precision: Literal["fp32", "bf16"] = "fp32"

    @property
    def watched(self) -> WatchedMetric:
        """What selects the best checkpoint (and drives early stopping when that is on)."""
        return self.early_stopping if self.early_stopping.task is not None else self.best_checkpoint

    def task_names_used(self) -> dict[str, str]:
        """config key -> task name, for every task this section names (checked against the dataset)."""
        named = {"train.early_stopping.task": self.early_stopping.task, "train.best_checkpoint.task": self.best_checkpoint.task}
        return {k: v for k, v in named.items() if v is not None and v != MEAN_OF_TASKS}

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
    """Planner constraints of one table (docs/TRAINING.md "Sharding under a memory budget")."""

    sharding_types: tuple[str, ...] = ()  # empty = let the planner choose among those allowed
    compute_kernels: tuple[str, ...] = ()
    # Column-wise shards are `min_partition` columns wide (rounded up to a multiple-of-4 divisor of
    # the dim; TorchRec's default is 128, so a 64-wide table is never split). None = auto: a table
    # that does not fit one rank's budget is cut into world-size shards, others keep TorchRec's.
    min_partition: Optional[int] = None
    pooling_factor: Optional[float] = None  # mean ids per row, for the planner's estimates; None = 1

    def validate(self, path: str) -> None:
        if self.min_partition is not None and (self.min_partition < 4 or self.min_partition % 4):
            raise ConfigError(f"{path}.min_partition: must be a multiple of 4 (fbgemm), got {self.min_partition}")
        if self.pooling_factor is not None and self.pooling_factor <= 0:
            raise ConfigError(f"{path}.pooling_factor: must be > 0, got {self.pooling_factor}")


@dataclass(frozen=True)
class ShardingConfig:
    """Per-table planner constraints (`tables` is keyed by table name `t_<feature>` and replaces
    `default` for that table) and the per-rank memory budget the plan must fit."""

    default: TableShardingConfig = field(default_factory=TableShardingConfig)
    tables: dict[str, TableShardingConfig] = field(default_factory=dict)
    # Memory one rank may use (GB = 1e9 bytes): host RAM on CPU, device memory on GPU. None = detected
    # (physical RAM / local ranks, or the GPU's memory).
    per_rank_memory_gb: Optional[float] = None
    # Share of the budget kept for activations, batches and allocator slack; the rest, minus the
    # dense parameters' state, is what table shards (weights + optimiser state) may fill.
    reserve_fraction: float = 0.15

    def for_table(self, table: str) -> TableShardingConfig:
        return self.tables.get(table, self.default)

    def validate(self, path: str) -> None:
        if self.per_rank_memory_gb is not None and self.per_rank_memory_gb <= 0:
            raise ConfigError(f"{path}.per_rank_memory_gb: must be > 0 or null, got {self.per_rank_memory_gb}")
        if not 0 <= self.reserve_fraction < 1:
            raise ConfigError(f"{path}.reserve_fraction: must be in [0, 1), got {self.reserve_fraction}")


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


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `raw` with `a.b.c=value` overrides applied (value parsed as YAML).
    A malformed override is a ConfigError naming it."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = parse_yaml(value, f"override {item!r}")
    return out


def deep_merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """`child` on top of `base`: mappings merge key by key, every other value (lists too) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_layers(path: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The `extends` chain of a job YAML, base first: (file, its mapping merged onto its bases').
    The last entry is the whole config. Errors name the file; a cycle names every file in it."""
    layers: list[tuple[Path, dict[str, Any]]] = []
    _read_layers(Path(path), [], layers)
    return layers


def _read_layers(path: Path, chain: list[Path], layers: list[tuple[Path, dict[str, Any]]]) -> None:
    if path.resolve() in [p.resolve() for p in chain]:
        raise ConfigError(f"{chain[-1]}: {EXTENDS} cycle: {' -> '.join(map(str, [*chain, path]))}")
    if not path.is_file():
        what = f"{chain[-1]}: {EXTENDS}: " if chain else ""
        raise ConfigError(f"{what}{path}: no such config file")
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop(EXTENDS, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: {EXTENDS}: expected a file path relative to this file, got {base!r}")
        _read_layers(path.parent / base, [*chain, path], layers)
        raw = deep_merge(layers[-1][1], raw)
    layers.append((path, raw))


def load_job_config(path: str | Path, overrides: Sequence[str] | None = None) -> JobConfig:
    """Read (with its `extends` chain), override and validate a job YAML. An error names the file
    whose keys make it invalid (the first in the chain, base first) or else the override."""
    layers = read_config_layers(path)
    overrides = list(overrides or [])
    merged = apply_overrides(layers[-1][1], overrides)
    try:
        return from_dict(JobConfig, merged)
    except ConfigError as error:
        raise _blame(error, layers, overrides) from None


def _blame(error: ConfigError, layers: list[tuple[Path, dict[str, Any]]], overrides: list[str]) -> ConfigError:
    """`error` (of the merged, overridden config) attributed to a file or an override."""
    for source, raw in layers:
        try:
            from_dict(JobConfig, raw)
        except ConfigError as e:
            return ConfigError(f"{source}: {e}")
    for item in overrides:
        try:
            from_dict(JobConfig, apply_overrides(layers[-1][1], [item]))
        except ConfigError as e:
            return ConfigError(f"override {item!r}: {e}")
    return ConfigError(f"overrides {overrides}: {error}")  # each one is fine alone, not together


def max_steps_cap(env: Mapping[str, str]) -> Optional[int]:
    """The MTREC_MAX_STEPS step budget (None when unset): lets a harness run documented commands
    with a few steps. Validation and evaluation batches are not affected."""
    value = env.get(MAX_STEPS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{MAX_STEPS_ENV}={value!r}: expected a positive integer")
    return int(value)


def train_job_config(path: str | Path, overrides: Sequence[str] = (), *, max_steps: Optional[int] = None,
                     epochs: Optional[int] = None, seed: Optional[int] = None,
                     env: Mapping[str, str] = os.environ) -> JobConfig:
    """The config of `mtrec train`: the YAML, its `key=value` overrides, then the --max-steps,
    --epochs and --seed flags, then train.max_steps capped at MTREC_MAX_STEPS when that is set."""
    flags = [f"train.{key}={value}" for key, value in (("max_steps", max_steps), ("epochs", epochs), ("seed", seed))
             if value is not None]
    cfg = load_job_config(path, [*overrides, *flags])
    cap = max_steps_cap(env)
    if cap is not None and (cfg.train.max_steps is None or cfg.train.max_steps > cap):
        cfg = replace(cfg, train=replace(cfg.train, max_steps=cap))
    return cfg


# Keys a resumed run may change: budgets, validation/checkpoint/logging cadence, loader processes, the
# sharding plan (the checkpoint layer checks the layouts) and evaluation. Every other key (the model,
# the optimisers and LR schedule, the batch size, the seed, what early stopping watches) is part of
# what the run trains: changing it under the same run directory would mix two trainings in one run.
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.early_stopping.patience", "train.validate_every_steps",
                     "train.validation_max_batches", "train.checkpoint_every_steps", "train.keep_last_checkpoints",
                     "train.log_every_steps", "data.", "sharding.", "eval.")


def differing_keys(a: Any, b: Any, path: str = "") -> list[str]:
    """Key paths (`train.dense_optimizer.lr`) where two config dicts differ, in sorted key order."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in differing_keys(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))]
    return [] if a == b else [path]


def value_at(tree: Mapping[str, Any], key: str) -> Any:
    """The value at a key path of a config dict (None where a part is missing)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, Mapping) else None
    return tree


def check_resumed_config(saved_text: str, source: str, cfg: JobConfig, accept: bool) -> list[str]:
    """The changes of `cfg` against the config a run was trained with (`saved_text`, from `source`)
    as "key: old -> new" lines. A change outside RESUMABLE_CHANGES is a ConfigError unless `accept`."""
    saved = parse_yaml(saved_text, source)
    try:  # with this version's defaults for keys an older mtrec did not write
        saved = to_dict(from_dict(JobConfig, saved))
    except ConfigError:  # a key this version no longer has: compared as written
        pass
    current = to_dict(cfg)
    changes = [(key, value_at(saved, key), value_at(current, key)) for key in differing_keys(saved, current)]
    refused = [f"{key}: {old!r} -> {new!r}" for key, old, new in changes if not resumable_change(key)]
    if refused and not accept:
        raise ConfigError(f"{source}: the run was trained with another config ({'; '.join(refused)}): resuming it "
                          "would mix two trainings in one run. Use another --out with --init-from RUN to fine-tune "
                          "from its weights, --no-resume to start over, or --accept-config-changes to continue it "
                          "under the new config")
    return [f"{key}: {old!r} -> {new!r}" for key, old, new in changes]


def resumable_change(key: str) -> bool:
    """A resumed run may change this config key (RESUMABLE_CHANGES)."""
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE_CHANGES)


def dump_job_config(cfg: JobConfig) -> str:
    """The resolved config as YAML (written next to every run)."""
    return dump_yaml(to_dict(cfg), sort_keys=False)
