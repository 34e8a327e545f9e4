"""Deep Mutual Learning across task towers (docs/MATH.md §5.2, §7.12-15): switches, CTFM, GKD."""
from __future__ import annotations

import pytest
import torch

from models.blocks import MLP
from models.config import ModelConfig
from models.factory import build_backbone, build_model
from models.sparse_arch import SparseArch
from models.towers import TaskTowers
from models.typed_config import from_dict
from tests.models.conftest import input_spec, random_batch

BACKBONE = {"type": "adatt_sp", "expert_out_dims": [[8], [6]], "num_task_experts": 2}


def build(dml: dict | None = None, num_tasks: int = 3, seed: int = 0, regression: bool = False, **model):
    cfg = from_dict(ModelConfig, {"backbone": BACKBONE, "tower_mlp": [5], "dml": dml or {}, **model}, "model")
    torch.manual_seed(seed)
    return build_model(cfg, input_spec(num_tasks, regression=regression), ebc_device="cpu")


def bare(cfg_dict: dict, spec, seed: int = 0):
    """Backbone + towers built by hand in the factory's order, with no DML code involved."""
    cfg = from_dict(ModelConfig, cfg_dict, "model")
    torch.manual_seed(seed)
    sparse = SparseArch(spec, cfg.embedding, "cpu")
    dense = MLP(spec.dense_dim, cfg.dense_mlp)
    backbone = build_backbone(cfg.backbone, sparse.out_dim + dense.out_dim, len(spec.tasks))
    towers = TaskTowers(backbone.out_dim, cfg.tower_mlp, len(spec.tasks))
    return sparse, dense, backbone, towers


@pytest.mark.parametrize("dml", [None, {"ctfm": {"enabled": False, "d_e": 4}, "gkd": {"enabled": False, "tau": 2.0}}])
def test_dml_off_is_bit_identical_to_backbone_plus_towers(dml):
    spec = input_spec(3)
    model = build(dml)
    sparse, dense, backbone, towers = bare({"backbone": BACKBONE, "tower_mlp": [5]}, spec)
    parts = {"sparse_arch": sparse, "dense_arch": dense, "backbone": backbone, "towers": towers}
    expected = {f"{prefix}.{k}": v for prefix, part in parts.items() for k, v in part.state_dict().items()}
    got = model.state_dict()
    assert list(got) == list(expected) and model.ctfm is None and model.gkd is None
    assert all(torch.equal(got[k], expected[k]) for k in got)
    batch = random_batch(spec)
    x = torch.cat([sparse(batch.sparse_features), dense(batch.dense)], dim=1)
    _, out = model(batch)
    assert torch.equal(out["logits"], towers(backbone(x).hidden).logits)


def test_ctfm_zero_init_value_with_add_starts_as_the_bare_model():
    on = build({"ctfm": {"enabled": True, "merge": "add", "zero_init_value": True}})
    off = build()
    batch = random_batch(input_spec(3))
    assert torch.equal(on(batch)[1]["logits"], off(batch)[1]["logits"])


def tower_input_grads(model, batch, per_task: bool = True) -> torch.Tensor:
    """|d (task k's share of the loss) / d H[:, j]| summed over rows and width: [T(k), T(j)]."""
    hidden = model.backbone(model.shared_input(batch)).hidden
    hidden.retain_grad()
    towers = model.towers(model.ctfm(hidden))
    global_logits = None if model.gkd is None else model.gkd(towers)
    terms = model.loss_fn(towers.logits, global_logits, batch.labels, batch.masks, batch.weights)
    rows = []
    for k in range(hidden.shape[1]):
        hidden.grad = None
        terms.per_task_total[k].backward(retain_graph=True)
        rows.append(hidden.grad.abs().sum(dim=(0, 2)))
    return torch.stack(rows)


@pytest.mark.parametrize("ctfm", [{}, {"include_self": True}, {"merge": "add"}])
@pytest.mark.parametrize("gkd", [False, True])
def test_ctfm_keeps_each_task_loss_off_other_towers_inputs(ctfm, gkd):
    model = build({"ctfm": {"enabled": True, **ctfm}, "gkd": {"enabled": gkd}})
    grads = tower_input_grads(model, random_batch(input_spec(3)))
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert (grads[off_diagonal] == 0).all(), grads
    assert (grads.diagonal() > 0).all()


def test_ctfm_without_stop_gradient_reaches_other_towers():
    model = build({"ctfm": {"enabled": True, "stop_gradient": False}})
    grads = tower_input_grads(model, random_batch(input_spec(3)))
    assert (grads[~torch.eye(3, dtype=torch.bool)] > 0).all(), grads


@pytest.mark.parametrize("include_self", [False, True])
def test_ctfm_attention_rows_sum_to_one(include_self):
    model = build({"ctfm": {"enabled": True, "include_self": include_self, "d_a": 3, "d_v": 4}})
    hidden = torch.randn(16, 3, 6)
    context, attention = model.ctfm.attend(hidden)
    assert context.shape == (16, 3, 4) and model.ctfm(hidden).shape == (16, 3, 10)
    torch.testing.assert_close(attention.sum(-1), torch.ones(16, 3))
    assert (attention >= 0).all()
    assert (attention.diagonal(dim1=1, dim2=2) > 0).all() if include_self else \
        (attention.diagonal(dim1=1, dim2=2) == 0).all()


def test_ctfm_with_one_task_needs_include_self():
    one = build({"ctfm": {"enabled": True, "include_self": True}}, num_tasks=1)
    _, out = one(random_batch(input_spec(1)))
    assert out["logits"].shape == (16, 1)


def test_gkd_global_features_put_own_tower_first_then_others_ascending():
    model = build({"gkd": {"enabled": True}})
    z = torch.arange(3.0).view(1, 3, 1).expand(2, 3, 2)  # tower j's hidden = j
    towers = type(model.towers(torch.zeros(2, 3, 6)))(torch.zeros(2, 3), z)
    u = model.gkd.global_features(towers)
    assert u[0].tolist() == [[0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 2, 2], [2, 2, 0, 0, 1, 1]]


@pytest.mark.parametrize("source", ["hidden", "logit"])
def test_gkd_task_loss_never_reaches_other_towers(source):
    model = build({"gkd": {"enabled": True, "source": source}, "ctfm": {"enabled": True}})
    batch = random_batch(input_spec(3))
    _, out = model(batch)
    assert (out["dml_per_task"] >= 0).all() and (out["dml_per_task"] > 0).any()
    grads = per_task_tower_grads(model, batch)
    assert (grads[~torch.eye(3, dtype=torch.bool)] == 0).all(), grads
    assert (grads.diagonal() > 0).all()


def test_gkd_without_stop_gradient_reaches_other_towers():
    model = build({"gkd": {"enabled": True, "stop_gradient": False}})
    grads = per_task_tower_grads(model, random_batch(input_spec(3)))
    assert (grads[~torch.eye(3, dtype=torch.bool)] > 0).all(), grads


def per_task_tower_grads(model, batch) -> torch.Tensor:
    """|d (task k's total loss) / d (tower j's parameters)|: [T(k), T(j)]; tower j = slice j of
    every tower bank parameter."""
    hidden = model.backbone(model.shared_input(batch)).hidden
    towers = model.towers(hidden if model.ctfm is None else model.ctfm(hidden))
    terms = model.loss_fn(towers.logits, model.gkd(towers), batch.labels, batch.masks, batch.weights)
    params = list(model.towers.parameters())
    rows = []
    for k in range(3):
        grads = torch.autograd.grad(terms.per_task_total[k], params, retain_graph=True)
        rows.append(sum(g.abs().flatten(1).sum(1) for g in grads))
    return torch.stack(rows)


def test_gkd_outputs_and_serve_heads():
    batch = random_batch(input_spec(3, regression=True))
    outputs = {}
    for head in ("local", "global", "mean"):
        _, out = build({"gkd": {"enabled": True, "serve_head": head}}, regression=True)(batch)
        outputs[head] = out
    local, global_ = outputs["local"], outputs["global"]
    assert torch.equal(local["logits"], local["logits_local"])
    assert torch.equal(global_["logits"], global_["logits_global"])
    mean = outputs["mean"]
    binary_mean = (mean["predictions_local"][:, :2] + mean["predictions_global"][:, :2]) / 2
    torch.testing.assert_close(mean["predictions"][:, :2], binary_mean)
    torch.testing.assert_close(mean["predictions"][:, 2], (mean["logits_local"][:, 2] + mean["logits_global"][:, 2]) / 2)
    torch.testing.assert_close(mean["predictions_local"][:, 2], mean["logits_local"][:, 2])  # regression: values
    for key in ("loss_per_task_global", "dml_per_task"):
        assert local[key].shape == (3,)


def test_gkd_switches_change_the_loss_terms():
    batch = random_batch(input_spec(3))
    full = build({"gkd": {"enabled": True, "mutual_weight": 1.0}})
    loss, out = full(batch)
    expected = (out["loss_per_task"] + out["loss_per_task_global"] + out["dml_per_task"]).sum()
    torch.testing.assert_close(loss, expected)
    loss, out = build({"gkd": {"enabled": True, "mutual": False}})(batch)
    torch.testing.assert_close(loss, (out["loss_per_task"] + out["loss_per_task_global"]).sum())
    loss, out = build({"gkd": {"enabled": True, "label_loss": False, "mutual_weight": {"t0": 0.0, "t1": 1.0,
                                                                                        "t2": 2.0}}})(batch)
    torch.testing.assert_close(loss, out["loss_per_task"].sum() + out["dml_per_task"][1] + 2 * out["dml_per_task"][2])
