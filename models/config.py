"""Typed model configuration: the `model:` section of a job YAML (docs/MODELS.md has the reference).

Built with `models.typed_config.from_dict`, which rejects unknown keys by path and calls each
dataclass's `validate(path)`. Checks that need the dataset (task names and count, dense width,
table names) live in `ModelConfig.validate_for(inputs)`, which `models.factory.build_model` calls.

Backbone keys that only some backbone types use default to `None`; setting one for a type that
ignores it is an error (a silently ignored key is as bad as an unknown one) [project].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from models.inputs import InputSpec
from models.typed_config import ConfigError

BackboneType = Literal[
    "adatt_sp", "adatt_general", "ple", "cgc", "mmoe", "ml_mmoe", "shared_bottom", "cross_stitch"
]
TaskExpertCounts = Union[int, tuple[int, ...]]

# Which optional backbone keys each type reads (docs/MATH.md §3). `expert_out_dims` is used by all.
_KEYS_BY_TYPE: dict[str, frozenset[str]] = {
    "shared_bottom": frozenset(),
    "mmoe": frozenset({"num_experts", "gate_bias"}),
    "ml_mmoe": frozenset({"num_experts", "gate_bias"}),
    "cgc": frozenset({"num_task_experts", "num_shared_experts", "gate_bias"}),
    "ple": frozenset({"num_task_experts", "num_shared_experts", "gate_bias"}),
    "cross_stitch": frozenset({"stitch_init"}),
    "adatt_sp": frozenset({"num_task_experts", "self_exp_res_connect", "gate_bias"}),
    "adatt_general": frozenset({"num_task_experts", "num_shared_experts", "self_exp_res_connect", "gate_bias"}),
}
# Keys a type needs (no default): expert counts.
_REQUIRED_BY_TYPE: dict[str, frozenset[str]] = {
    "shared_bottom": frozenset(),
    "mmoe": frozenset({"num_experts"}),
    "ml_mmoe": frozenset({"num_experts"}),
    "cgc": frozenset({"num_task_experts", "num_shared_experts"}),
    "ple": frozenset({"num_task_experts", "num_shared_experts"}),
    "cross_stitch": frozenset(),
    "adatt_sp": frozenset({"num_task_experts"}),
    "adatt_general": frozenset({"num_task_experts", "num_shared_experts"}),
}
_OPTIONAL_KEYS = ("num_experts", "num_task_experts", "num_shared_experts", "self_exp_res_connect",
                  "gate_bias", "stitch_init")


@dataclass(frozen=True)
class BackboneConfig:
    """docs/MATH.md §3. `expert_out_dims`: one list of MLP widths per level (L levels)."""

    type: BackboneType
    expert_out_dims: tuple[tuple[int, ...], ...] = ((128,), (64,))
    num_task_experts: Optional[TaskExpertCounts] = None  # m_t: int, or one per task (ple/cgc/adatt_general)
    num_shared_experts: Optional[int] = None  # m_s
    num_experts: Optional[int] = None  # n of mmoe / ml_mmoe
    self_exp_res_connect: Optional[bool] = None  # AdaTT native-expert residual; default true
    gate_bias: Optional[bool] = None  # bias in every gate Linear; default true (reference code)
    stitch_init: Optional[Literal["reference", "near_identity"]] = None  # default reference

    @property
    def num_levels(self) -> int:
        return len(self.expert_out_dims)

    @property
    def out_dim(self) -> int:
        """D_L, the width of every row of the backbone output."""
        return self.expert_out_dims[-1][-1]

    @property
    def use_gate_bias(self) -> bool:
        return True if self.gate_bias is None else self.gate_bias

    @property
    def use_native_residual(self) -> bool:
        return True if self.self_exp_res_connect is None else self.self_exp_res_connect

    @property
    def stitch_init_mode(self) -> str:
        return self.stitch_init or "reference"

    def task_expert_counts(self, num_tasks: int) -> list[int]:
        """m_t per task (an int applies to every task)."""
        m = self.num_task_experts
        if isinstance(m, int):
            return [m] * num_tasks
        return list(m or ())

    def validate(self, path: str) -> None:
        used = _KEYS_BY_TYPE[self.type]
        for key in _OPTIONAL_KEYS:
            if getattr(self, key) is not None and key not in used:
                users = sorted(t for t, keys in _KEYS_BY_TYPE.items() if key in keys)
                raise ConfigError(f"{path}.{key}: not used by backbone type {self.type!r} (used by {users})")
        for key in sorted(_REQUIRED_BY_TYPE[self.type]):
            if getattr(self, key) is None:
                raise ConfigError(f"{path}.{key}: required for backbone type {self.type!r}")
        self._validate_widths(path)
        self._validate_counts(path)

    def _validate_widths(self, path: str) -> None:
        if not self.expert_out_dims:
            raise ConfigError(f"{path}.expert_out_dims: needs at least one level")
        for level, widths in enumerate(self.expert_out_dims):
            if not widths:
                raise ConfigError(f"{path}.expert_out_dims[{level}]: a level needs at least one width")
            for i, w in enumerate(widths):
                if w < 1:
                    raise ConfigError(f"{path}.expert_out_dims[{level}][{i}]: width must be >= 1, got {w}")
        if self.type in ("mmoe", "cgc") and self.num_levels != 1:
            multi = {"mmoe": "ml_mmoe", "cgc": "ple"}[self.type]
            raise ConfigError(
                f"{path}.expert_out_dims: {self.type} has exactly one level (multi-layer experts are "
                f"written as one level, e.g. [[128, 64]]); got {self.num_levels} levels, use {multi}"
            )

    def _validate_counts(self, path: str) -> None:
        if self.num_experts is not None and self.num_experts < 1:
            raise ConfigError(f"{path}.num_experts: zero experts; must be >= 1, got {self.num_experts}")
        m = self.num_task_experts
        if isinstance(m, tuple):
            if self.type == "adatt_sp":
                raise ConfigError(f"{path}.num_task_experts: adatt_sp needs one int (equal m per task); "
                                  f"per-task lists need adatt_general")
            if not m:
                raise ConfigError(f"{path}.num_task_experts: empty list")
        for i, count in enumerate([m] if isinstance(m, int) else list(m or ())):
            where = f"{path}.num_task_experts" + ("" if isinstance(m, int) else f"[{i}]")
            if count < 1:
                raise ConfigError(f"{where}: zero experts; every task unit needs >= 1, got {count}")
        m_s = self.num_shared_experts
        if m_s is not None and m_s < 0:
            raise ConfigError(f"{path}.num_shared_experts: must be >= 0, got {m_s}")
        if self.type == "ple" and m_s == 0:
            # [project] docs/MATH.md §3.4: the reference code's `[-0:]` slice breaks for m_s = 0; PLE
            # rejects it, CGC (the one-level ablation) allows it (task gates over own experts only).
            raise ConfigError(f"{path}.num_shared_experts: ple needs >= 1 shared expert (m_s = 0 is only "
                              f"allowed for cgc)")
        if self.type == "adatt_general" and m_s == 0 and isinstance(m, tuple) and len(set(m)) > 1:
            raise ConfigError(f"{path}.num_shared_experts: m_s = 0 makes adatt_general AdaTT-sp, which needs "
                              f"the same expert count for every task; got num_task_experts={list(m)}")


@dataclass(frozen=True)
class TableInitConfig:
    """Init of one embedding table (docs/MATH.md §1.1). `scale`: normal std, or uniform half-width."""

    init: Literal["default", "normal", "uniform"] = "default"
    scale: Optional[float] = None

    def validate(self, path: str) -> None:
        if self.init == "default" and self.scale is not None:
            raise ConfigError(f"{path}.scale: init 'default' is TorchRec's U(±sqrt(1/num_embeddings)) and "
                              f"takes no scale")
        if self.init != "default" and (self.scale is None or self.scale <= 0):
            raise ConfigError(f"{path}.scale: init {self.init!r} needs a scale > 0, got {self.scale}")


@dataclass(frozen=True)
class EmbeddingConfig:
    """`dim`: null = each feature's dim from the dataset schema. `init`/`scale` apply to every table
    unless `tables` (keyed by table name `t_<feature>`) overrides them."""

    dim: Optional[int] = None
    init: Literal["default", "normal", "uniform"] = "default"
    scale: Optional[float] = None
    tables: dict[str, TableInitConfig] = field(default_factory=dict)
    data_type: Literal["fp32", "fp16"] = "fp32"  # table weights; pooled outputs stay fp32 (models/sparse_arch.py)

    def validate(self, path: str) -> None:
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"{path}.dim: must be >= 1 or null, got {self.dim}")
        TableInitConfig(self.init, self.scale).validate(path)

    def table_init(self, table_name: str) -> TableInitConfig:
        return self.tables.get(table_name, TableInitConfig(self.init, self.scale))


@dataclass(frozen=True)
class CTFMConfig:
    """Cross Task Feature Mining, docs/MATH.md §5.2 (mtrec design). Widths null = D_L."""

    enabled: bool = False
    stop_gradient: bool = True
    include_self: bool = False
    merge: Literal["concat", "add"] = "concat"
    d_e: int = 16
    d_a: Optional[int] = None
    d_v: Optional[int] = None
    zero_init_value: bool = False

    def validate(self, path: str) -> None:
        for key in ("d_e", "d_a", "d_v"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{path}.{key}: must be >= 1, got {value}")


@dataclass(frozen=True)
class GKDConfig:
    """Global Knowledge Distillation, docs/MATH.md §5.2 (mtrec design).

    `mutual_weight` is λ_k (the spec's `lambda`, a Python keyword): one number, or a mapping with
    every task name. `mlp` null = [tower_mlp[-1]] ([] when tower_mlp is empty) [project].
    """

    enabled: bool = False
    source: Literal["hidden", "logit"] = "hidden"
    stop_gradient: bool = True
    mlp: Optional[tuple[int, ...]] = None
    label_loss: bool = True
    mutual: bool = True
    tau: float = 1.0
    mutual_weight: Union[float, dict[str, float]] = 0.5
    serve_head: Literal["global", "local", "mean"] = "global"

    def validate(self, path: str) -> None:
        if self.tau <= 0:
            raise ConfigError(f"{path}.tau: must be > 0, got {self.tau}")
        weights = self.mutual_weight.values() if isinstance(self.mutual_weight, dict) else [self.mutual_weight]
        if any(w < 0 for w in weights):
            raise ConfigError(f"{path}.mutual_weight: must be >= 0, got {self.mutual_weight}")
        if self.mlp is not None and any(w < 1 for w in self.mlp):
            raise ConfigError(f"{path}.mlp: widths must be >= 1, got {list(self.mlp)}")
        if self.enabled and not (self.label_loss or self.mutual):
            raise ConfigError(f"{path}: label_loss and mutual are both false, so the global heads would "
                              f"never be trained")

    def head_mlp(self, tower_mlp: tuple[int, ...]) -> tuple[int, ...]:
        if self.mlp is not None:
            return self.mlp
        return tower_mlp[-1:]


@dataclass(frozen=True)
class DMLConfig:
    """Deep Mutual Learning across task towers; each part switches on its own (docs/MATH.md §5)."""

    ctfm: CTFMConfig = field(default_factory=CTFMConfig)
    gkd: GKDConfig = field(default_factory=GKDConfig)


@dataclass(frozen=True)
class LossConfig:
    """docs/MATH.md §6. `task_weights` overrides `Task.loss_weight` (w_k) by task name.

    `loss_norm: global` all-reduces the per-task denominators; models/ has no process group, so the
    training code must pass a `GlobalLossNorm` to `build_model`.
    """

    task_weights: dict[str, float] = field(default_factory=dict)
    loss_norm: Literal["local", "global"] = "local"
    eps: float = 1e-12  # ε of max(Σ δ s, ε) [project]

    def validate(self, path: str) -> None:
        for name, w in self.task_weights.items():
            if w < 0:
                raise ConfigError(f"{path}.task_weights.{name}: must be >= 0, got {w}")
        if self.eps <= 0:
            raise ConfigError(f"{path}.eps: must be > 0, got {self.eps}")


def _default_backbone() -> BackboneConfig:
    """The docs/MATH.md §9.3 census setting: AdaTT-sp, [[128],[64]], 2 experts per task."""
    return BackboneConfig(type="adatt_sp", expert_out_dims=((128,), (64,)), num_task_experts=2)


@dataclass(frozen=True)
class ModelConfig:
    """The `model:` section of a job config."""

    backbone: BackboneConfig = field(default_factory=_default_backbone)
    tower_mlp: tuple[int, ...] = (32,)
    dense_mlp: tuple[int, ...] = ()  # MLP on the dense block before the concat [project]
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    dml: DMLConfig = field(default_factory=DMLConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self, path: str) -> None:
        for key in ("tower_mlp", "dense_mlp"):
            for i, w in enumerate(getattr(self, key)):
                if w < 1:
                    raise ConfigError(f"{path}.{key}[{i}]: width must be >= 1, got {w}")
        ctfm = self.dml.ctfm
        d_l = self.backbone.out_dim
        if ctfm.merge == "add" and ctfm.d_v is not None and ctfm.d_v != d_l:
            raise ConfigError(f"{path}.dml.ctfm.d_v: merge 'add' needs d_v == D_L = {d_l} (the backbone's "
                              f"last expert width), got {ctfm.d_v}")

    def validate_for(self, inputs: InputSpec, path: str = "model") -> None:
        """Checks that need the dataset: task count and names, dense width, table names."""
        self.validate(path)
        num_tasks = len(inputs.tasks)
        if num_tasks < 1:
            raise ConfigError(f"{path}: the dataset defines no tasks")
        names = set(inputs.task_names)
        m = self.backbone.num_task_experts
        if isinstance(m, tuple) and len(m) != num_tasks:
            raise ConfigError(f"{path}.backbone.num_task_experts: {len(m)} counts for {num_tasks} tasks "
                              f"{inputs.task_names}")
        _check_task_keys(f"{path}.loss.task_weights", self.loss.task_weights, names, complete=False)
        gkd = self.dml.gkd
        if isinstance(gkd.mutual_weight, dict):
            _check_task_keys(f"{path}.dml.gkd.mutual_weight", gkd.mutual_weight, names, complete=True)
        ctfm = self.dml.ctfm
        if ctfm.enabled and num_tasks == 1 and not ctfm.include_self:
            raise ConfigError(f"{path}.dml.ctfm: with one task and include_self=false the key set is empty; "
                              f"set include_self=true or disable CTFM")
        if self.dense_mlp and inputs.dense_dim == 0:
            raise ConfigError(f"{path}.dense_mlp: the dataset has no dense features")
        if not inputs.sparse_features and inputs.dense_dim == 0:
            raise ConfigError(f"{path}: the dataset has neither sparse nor dense features")
        tables = {f.table_name for f in inputs.sparse_features}
        unknown = sorted(set(self.embedding.tables) - tables)
        if unknown:
            raise ConfigError(f"{path}.embedding.tables: unknown table(s) {unknown}; tables are {sorted(tables)}")

    def task_loss_weights(self, inputs: InputSpec) -> list[float]:
        """w_k: `loss.task_weights` where given, else the dataset's Task.loss_weight."""
        return [self.loss.task_weights.get(t.name, t.loss_weight) for t in inputs.tasks]

    def mutual_weights(self, inputs: InputSpec) -> list[float]:
        """λ_k per task."""
        lam = self.dml.gkd.mutual_weight
        return [lam[n] for n in inputs.task_names] if isinstance(lam, dict) else [lam] * len(inputs.tasks)


def _check_task_keys(path: str, mapping: dict[str, float], names: set[str], complete: bool) -> None:
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown task(s) {unknown}; tasks are {sorted(names)}")
    missing = sorted(names - set(mapping))
    if complete and missing:
        raise ConfigError(f"{path}: no value for task(s) {missing} (give one number or every task)")
