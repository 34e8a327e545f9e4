"""Build a MultiTaskModel from a validated ModelConfig and the dataset's InputSpec.

Modules are created in a fixed order (sparse arch, dense MLP, backbone, towers, CTFM, GKD), and a
disabled DML part builds nothing and draws no RNG, so a seeded model with DML off is bit-identical
to backbone + towers (docs/MATH.md §5.2 "Switches").
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Callable, Literal, Mapping, Optional

from models.adatt import AdaTTGeneral, AdaTTSp
from models.blocks import MLP, Backbone
from models.config import BackboneConfig, ModelConfig
from models.cross_stitch import CrossStitch
from models.ctfm import CTFM
from models.gkd import GlobalHeads
from models.inputs import InputSpec
from models.losses import GlobalLossNorm, MultiTaskLoss
from models.ml_mmoe import MLMMoE
from models.mmoe import MMoE
from models.multitask_model import MultiTaskModel
from models.ple import CGC, PLE
from models.shared_bottom import SharedBottom
from models.sparse_arch import SparseArch
from models.towers import TaskTowers
from models.typed_config import ConfigError

log = logging.getLogger(__name__)

BackboneBuilder = Callable[[BackboneConfig, int, int], Backbone]


def _adatt_general(cfg: BackboneConfig, input_dim: int, num_tasks: int) -> Backbone:
    counts = cfg.task_expert_counts(num_tasks)
    if cfg.num_shared_experts == 0:  # AdaTT Fig. 1: no shared unit is AdaTT-sp (§3.7)
        return AdaTTSp(input_dim, cfg.expert_out_dims, num_tasks, counts[0], cfg.use_native_residual,
                       cfg.use_gate_bias)
    return AdaTTGeneral(input_dim, cfg.expert_out_dims, counts, cfg.num_shared_experts, cfg.use_native_residual,
                        cfg.use_gate_bias)


# Backbone registry: config `backbone.type` -> builder(cfg, input width D, number of tasks T).
BACKBONES: Mapping[str, BackboneBuilder] = MappingProxyType({
    "shared_bottom": lambda c, d, t: SharedBottom(d, c.expert_out_dims, t),
    "mmoe": lambda c, d, t: MMoE(d, c.expert_out_dims, t, c.num_experts, c.use_gate_bias),
    "ml_mmoe": lambda c, d, t: MLMMoE(d, c.expert_out_dims, t, c.num_experts, c.use_gate_bias),
    "cgc": lambda c, d, t: CGC(d, c.expert_out_dims, c.task_expert_counts(t), c.num_shared_experts,
                               c.use_gate_bias),
    "ple": lambda c, d, t: PLE(d, c.expert_out_dims, c.task_expert_counts(t), c.num_shared_experts,
                               c.use_gate_bias),
    "cross_stitch": lambda c, d, t: CrossStitch(d, c.expert_out_dims, t, c.stitch_init_mode),
    "adatt_sp": lambda c, d, t: AdaTTSp(d, c.expert_out_dims, t, c.num_task_experts, c.use_native_residual,
                                        c.use_gate_bias),
    "adatt_general": _adatt_general,
})


def build_backbone(cfg: BackboneConfig, input_dim: int, num_tasks: int) -> Backbone:
    """The backbone registered under `cfg.type`."""
    if cfg.type not in BACKBONES:
        raise ConfigError(f"model.backbone.type: unknown backbone {cfg.type!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[cfg.type](cfg, input_dim, num_tasks)


def build_model(cfg: ModelConfig, inputs: InputSpec, *, ebc_device: Literal["meta", "cpu"] = "meta",
                global_loss_norm: Optional[GlobalLossNorm] = None) -> MultiTaskModel:
    """Validate `cfg` against `inputs` and build the model (EBC on `ebc_device`, the rest on CPU).

    `global_loss_norm` is required when `cfg.loss.loss_norm == "global"` (the training code owns the
    process group) and ignored otherwise.
    """
    cfg.validate_for(inputs)
    if cfg.loss.loss_norm == "global" and global_loss_norm is None:
        raise ConfigError("model.loss.loss_norm: 'global' needs the caller to pass global_loss_norm "
                          "(a GlobalLossNorm with a cross-rank sum) to build_model")
    num_tasks = len(inputs.tasks)
    sparse_arch = SparseArch(inputs, cfg.embedding, ebc_device) if inputs.sparse_features else None
    dense_arch = MLP(inputs.dense_dim, cfg.dense_mlp)
    input_dim = (sparse_arch.out_dim if sparse_arch else 0) + dense_arch.out_dim
    backbone = build_backbone(cfg.backbone, input_dim, num_tasks)
    ctfm_cfg, gkd_cfg = cfg.dml.ctfm, cfg.dml.gkd
    d_v = ctfm_cfg.d_v or backbone.out_dim
    tower_in = backbone.out_dim + d_v if ctfm_cfg.enabled and ctfm_cfg.merge == "concat" else backbone.out_dim
    towers = TaskTowers(tower_in, cfg.tower_mlp, num_tasks)
    ctfm = gkd = None
    if ctfm_cfg.enabled:
        ctfm = CTFM(num_tasks, backbone.out_dim, ctfm_cfg.d_e, ctfm_cfg.d_a or backbone.out_dim, d_v,
                    stop_gradient=ctfm_cfg.stop_gradient, include_self=ctfm_cfg.include_self,
                    merge=ctfm_cfg.merge, zero_init_value=ctfm_cfg.zero_init_value)
    if gkd_cfg.enabled:
        gkd = GlobalHeads(num_tasks, towers.hidden_dim, gkd_cfg.head_mlp(cfg.tower_mlp), source=gkd_cfg.source,
                          stop_gradient=gkd_cfg.stop_gradient)
    loss_fn = MultiTaskLoss(
        [t.kind == "binary" for t in inputs.tasks], cfg.task_loss_weights(inputs), cfg.mutual_weights(inputs),
        global_label_loss=gkd_cfg.label_loss, mutual=gkd_cfg.mutual, tau=gkd_cfg.tau, eps=cfg.loss.eps,
        global_norm=global_loss_norm if cfg.loss.loss_norm == "global" else None,
    )
    model = MultiTaskModel(sparse_arch, dense_arch, backbone, towers, loss_fn, ctfm=ctfm, gkd=gkd,
                           serve_head=gkd_cfg.serve_head)
    log.info("built %s: D=%d, T=%d, %d dense parameters, DML ctfm=%s gkd=%s", cfg.backbone.type, input_dim,
             num_tasks, sum(p.numel() for n, p in model.named_parameters() if not n.startswith("sparse_arch.")),
             ctfm_cfg.enabled, gkd_cfg.enabled)
    return model
