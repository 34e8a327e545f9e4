"""`mtrec init-config`: write a complete, commented job config for a dataset and a model type.

The config is built from the dataclasses of pipeline/config.py and models/config.py (so it is
valid by construction, and checked against the dataset with `ModelConfig.validate_for`), turned
into a dict with `to_dict` (every key, including those left null), and written as YAML with a short
comment on each key. Choices (docs/TRAINING.md "A config for your dataset"):
- tasks: the dataset's own names in `model.loss.task_weights` (the schema's loss weights);
- early stopping on the first binary task's validation AUC (or `--watch TASK`), patience 2;
- embeddings: `dim: null`, i.e. each table's dim from schema.yaml, which `mtrec prepare table`
  sets by the rule 6 * num_embeddings^(1/4) rounded to a multiple of 4 in [4, 64]
  (`pipeline.data.table.spec.auto_embedding_dim`); init N(0, 0.01);
- the backbone of each type as in configs/census_*.yaml; `--dml` switches on CTFM and GKD;
- below 100,000 train rows: batch size 256 (so a small dataset still gets enough steps per epoch)
  and no DataLoader worker process (starting one per epoch costs more than it saves); above:
  batch size 1024 and one worker per rank;
- sharding: table_wise for every table (real sharded tables with the fused optimiser, on CPU too).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional

from models.config import BackboneConfig, CTFMConfig, DMLConfig, EmbeddingConfig, GKDConfig, LossConfig, ModelConfig
from models.typed_config import ConfigError, dump_yaml, to_dict
from pipeline.config import (DataConfig, EarlyStoppingConfig, EvalConfig, JobConfig, ShardingConfig,
                             TableShardingConfig, TrainConfig)
if TYPE_CHECKING:  # the dataset contract pulls in numpy/pyarrow; the CLI imports this module for MODELS
    from pipeline.data.schema import DatasetSchema

MODELS = ("adatt_sp", "adatt_general", "ple", "mmoe", "ml_mmoe", "shared_bottom", "cross_stitch")
SMALL_DATASET_ROWS = 100_000

_TWO_LEVELS = ((128,), (64,))
BACKBONES = {
    "adatt_sp": BackboneConfig(type="adatt_sp", expert_out_dims=_TWO_LEVELS, num_task_experts=2,
                               self_exp_res_connect=True, gate_bias=True),
    "adatt_general": BackboneConfig(type="adatt_general", expert_out_dims=_TWO_LEVELS, num_task_experts=2,
                                    num_shared_experts=1, self_exp_res_connect=True, gate_bias=True),
    "ple": BackboneConfig(type="ple", expert_out_dims=_TWO_LEVELS, num_task_experts=1, num_shared_experts=3,
                          gate_bias=True),
    "mmoe": BackboneConfig(type="mmoe", expert_out_dims=((128, 64),), num_experts=6, gate_bias=True),
    "ml_mmoe": BackboneConfig(type="ml_mmoe", expert_out_dims=_TWO_LEVELS, num_experts=6, gate_bias=True),
    "shared_bottom": BackboneConfig(type="shared_bottom", expert_out_dims=_TWO_LEVELS),
    "cross_stitch": BackboneConfig(type="cross_stitch", expert_out_dims=_TWO_LEVELS, stitch_init="reference"),
}

COMMENTS = {
    "model": "model keys: docs/MODELS.md",
    "model.backbone.type": "adatt_sp | adatt_general | ple | cgc | mmoe | ml_mmoe | shared_bottom | cross_stitch",
    "model.backbone.expert_out_dims": "MLP widths per level; the last width is D_L",
    "model.backbone.num_task_experts": "experts per task (m_t)",
    "model.backbone.num_shared_experts": "shared experts (m_s)",
    "model.backbone.num_experts": "experts of mmoe / ml_mmoe",
    "model.backbone.self_exp_res_connect": "AdaTT native-expert residual",
    "model.backbone.gate_bias": "bias in every gate Linear",
    "model.backbone.stitch_init": "cross-stitch unit init: reference | near_identity",
    "model.tower_mlp": "per-task tower widths before the logit",
    "model.dense_mlp": "MLP on the dense block before the concat ([] = none)",
    "model.embedding.dim": "null = each table's dim from schema.yaml",
    "model.embedding.init": "default (TorchRec's) | normal | uniform",
    "model.embedding.scale": "std of normal / half-width of uniform",
    "model.embedding.tables": "per-table init overrides, keyed t_<feature>",
    "model.dml": "Deep Mutual Learning across task towers (docs/MATH.md §5)",
    "model.dml.ctfm.enabled": "Cross Task Feature Mining",
    "model.dml.gkd.enabled": "Global Knowledge Distillation",
    "model.dml.gkd.mutual_weight": "lambda of the mutual loss",
    "model.loss.task_weights": "loss weight w_k per task",
    "model.loss.loss_norm": "local | global (all-reduced denominators)",
    "train": "train/data/sharding/eval keys: docs/TRAINING.md",
    "train.seed": "model init and data order",
    "train.epochs": "stop after this many epochs ...",
    "train.max_steps": "... or this many steps (null = no step budget); `mtrec train --max-steps N` overrides",
    "train.batch_size": "rows per rank per step",
    "train.dense_optimizer.name": "adam | adamw | sgd | adagrad",
    "train.sparse_optimizer.name": "rowwise_adagrad | adagrad | sgd (fused into the backward)",
    "train.lr_schedule.name": "constant | cosine, after linear warm-up",
    "train.grad_clip_norm": "dense gradient norm clip (null = off)",
    "train.validate_every_steps": "null = after each epoch",
    "train.validation_max_batches": "null = the whole valid split",
    "train.early_stopping.task": "stop when this task's validation metric stops improving (null = off)",
    "train.early_stopping.metric": "auc | ne | logloss",
    "train.early_stopping.patience": "validations without improvement",
    "train.checkpoint_every_steps": "null = at each validation and at the end",
    "train.keep_last_checkpoints": "older complete checkpoints are deleted",
    "train.log_every_steps": "metrics.jsonl / progress-bar period",
    "data.num_workers": "DataLoader workers per rank",
    "data.shuffle_buffer_rows": "bounded shuffle buffer",
    "data.read_ahead": "prefetched batches per worker",
    "sharding.default.sharding_types": "allowed types for every table ([] = the planner chooses)",
    "sharding.default.compute_kernels": "[] = the planner chooses (fused on CPU)",
    "sharding.tables": "per-table constraints, keyed t_<feature>",
    "eval.batch_size": "validation and `mtrec evaluate`",
    "eval.auc_mode": "bounded (histogram, fixed memory) | exact",
}


def build_config(schema: "DatasetSchema", model: str, dml: bool = False, watch: Optional[str] = None) -> JobConfig:
    """The job config for `schema` (ConfigError for an unknown model or task)."""
    if model not in BACKBONES:
        raise ConfigError(f"--model: unknown model {model!r}; expected one of {list(MODELS)}")
    names = [t.name for t in schema.tasks]
    binary = [t.name for t in schema.tasks if t.kind == "binary"]
    if watch is not None and watch not in binary:
        raise ConfigError(f"--watch: {watch!r} is not a binary task of {schema.name!r}; binary tasks: {binary}")
    small = (schema.splits["train"].rows if "train" in schema.splits else 0) < SMALL_DATASET_ROWS
    cfg = JobConfig(
        model=ModelConfig(
            backbone=BACKBONES[model], tower_mlp=(32,), dense_mlp=(),
            embedding=EmbeddingConfig(dim=None, init="normal", scale=0.01),
            dml=_dml(dml, names),
            loss=LossConfig(task_weights={t.name: t.loss_weight for t in schema.tasks}),
        ),
        train=TrainConfig(
            batch_size=256 if small else 1024, epochs=8,
            early_stopping=EarlyStoppingConfig(task=watch or (binary[0] if binary else None), metric="auc",
                                               patience=2),
        ),
        data=DataConfig(num_workers=0 if small else 1),
        sharding=ShardingConfig(default=TableShardingConfig(sharding_types=("table_wise",))),
        eval=EvalConfig(),
    )
    cfg.model.validate_for(schema.input_spec())
    return cfg


def _dml(enabled: bool, names: list[str]) -> DMLConfig:
    if not enabled:
        return DMLConfig()
    ctfm = replace(CTFMConfig(), enabled=True, include_self=len(names) == 1)
    return DMLConfig(ctfm=ctfm, gkd=replace(GKDConfig(), enabled=True))


def render_config(cfg: JobConfig, header: str, comments: Optional[dict[str, str]] = None) -> str:
    """Every key of `cfg` as YAML, leaves in flow style, with the comment of COMMENTS (updated by
    `comments`) on its line."""
    lines = [f"# {line}" for line in header.splitlines()]
    notes = {**COMMENTS, **(comments or {})}
    _render(to_dict(cfg), "", 0, lines, notes, backbone_type=cfg.model.backbone.type)
    return "\n".join(lines) + "\n"


def _render(node: dict[str, Any], path: str, depth: int, lines: list[str], notes: dict[str, str],
            backbone_type: str) -> None:
    for key, value in node.items():
        key_path = f"{path}.{key}" if path else key
        comment = notes.get(key_path)
        if value is None and key_path.startswith("model.backbone."):
            comment = f"not used by {backbone_type}"
        suffix = f"  # {comment}" if comment else ""
        if isinstance(value, dict) and value:
            lines.append(f"{'  ' * depth}{key}:{suffix}")
            _render(value, key_path, depth + 1, lines, notes, backbone_type)
        else:
            lines.append(f"{'  ' * depth}{key}: {_flow(value)}{suffix}")


def _flow(value: Any) -> str:
    return dump_yaml(value, default_flow_style=True, width=1 << 20).strip().removesuffix("\n...")


def init_config(data: str, model: str, out: str, dml: bool = False, watch: Optional[str] = None) -> str:
    """Write the config for the dataset at `data` to `out` (atomically); returns a one-line summary."""
    from pipeline.data.schema import DatasetSchema
    from pipeline.runtime.atomic import atomic_write_text

    schema = DatasetSchema.load(data)
    cfg = build_config(schema, model, dml, watch)
    header = (f"mtrec job config for dataset {schema.name!r} ({data}), model {model}{' + DML' if dml else ''}.\n"
              f"Written by `mtrec init-config`; every key is explicit. Tasks: {[t.name for t in schema.tasks]}.")
    dims = ", ".join(f"{s.name} {s.embedding_dim}" for s in schema.sparse)
    comments = {"model.embedding.dim": f"null = each table's dim from schema.yaml ({dims or 'no tables'})"}
    atomic_write_text(out, render_config(cfg, header, comments))
    return (f"wrote {out}: {model}{' + DML' if dml else ''}, tasks {[t.name for t in schema.tasks]}, "
            f"early stopping on {cfg.train.early_stopping.task}, batch size {cfg.train.batch_size}")
