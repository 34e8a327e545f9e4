"""Backbone invariants of docs/MATH.md §7 (1-11): shapes, gates, fused == naive, special cases."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models.adatt import AdaTTGeneral, AdaTTSp
from models.blocks import BankMatmul, GatedMix
from models.config import BackboneConfig
from models.cross_stitch import CrossStitch
from models.factory import build_backbone
from models.ml_mmoe import MLMMoE
from models.mmoe import MMoE
from models.ple import CGC, PLE
from models.shared_bottom import SharedBottom
from tests.models import reference

D, B, D_L = 12, 16, 6
CONFIGS = {
    "shared_bottom": BackboneConfig("shared_bottom", ((8,), (D_L,))),
    "mmoe": BackboneConfig("mmoe", ((8, D_L),), num_experts=3),
    "ml_mmoe": BackboneConfig("ml_mmoe", ((8,), (7,), (D_L,)), num_experts=3),
    "cgc": BackboneConfig("cgc", ((8, D_L),), num_task_experts=2, num_shared_experts=1),
    "ple": BackboneConfig("ple", ((8,), (7,), (D_L,)), num_task_experts=2, num_shared_experts=2),
    "cross_stitch": BackboneConfig("cross_stitch", ((8,), (D_L,))),
    "adatt_sp": BackboneConfig("adatt_sp", ((8,), (7,), (D_L,)), num_task_experts=2),
    "adatt_general": BackboneConfig("adatt_general", ((8,), (7,), (D_L,)), num_task_experts=2, num_shared_experts=1),
}
GATED = ["mmoe", "ml_mmoe", "cgc", "ple", "adatt_sp", "adatt_general"]


def make(kind: str, num_tasks: int, seed: int = 0, **changes):
    cfg = dataclasses.replace(CONFIGS[kind], **changes)
    cfg.validate("backbone")
    torch.manual_seed(seed)
    return build_backbone(cfg, D, num_tasks)


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_output_shapes(kind, num_tasks):
    model = make(kind, num_tasks)
    out = model(inputs())
    assert out.hidden.shape == (B, num_tasks, D_L) and model.out_dim == D_L
    if kind in GATED:
        assert len(out.gates) == len(model.levels)
        for level, gates in zip(model.levels, out.gates):
            assert gates.shape == (B, level.num_gates, level.experts.num)
        assert out.gates[-1].shape[1] == num_tasks  # the last level gates exactly the T task rows
    else:
        assert out.gates is None


@pytest.mark.parametrize("kind", GATED)
def test_gate_rows_are_distributions(kind):
    for gates in make(kind, 3)(inputs()).gates:
        assert (gates >= 0).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:2]), atol=1e-6, rtol=0)


def _adatt_sp_residual(model: AdaTTSp):
    def residual(level, module):
        if not model.self_exp_res_connect:
            return None
        return model.native_weights[level, module] if model.learned_native else [1.0]
    return residual


def _adatt_general_residual(model: AdaTTGeneral):
    def residual(level, module):
        if not model.self_exp_res_connect:
            return None
        return [1.0] if model.unit_native else model.native_weights[module][level]
    return residual


def naive(model, x):
    """The §3 equations as per-expert loops, on the fused model's weights."""
    if isinstance(model, SharedBottom):
        return reference.shared_bottom(model, x)
    if isinstance(model, CrossStitch):
        return reference.cross_stitch(model, x)
    if isinstance(model, MLMMoE):
        return reference.ml_mmoe(model, x)
    if isinstance(model, PLE):
        return reference.ple(model, x)
    if isinstance(model, AdaTTSp):
        return reference.adatt(model, x, [model.num_task_experts] * model.num_tasks, _adatt_sp_residual(model))
    if isinstance(model, AdaTTGeneral):
        return reference.adatt(model, x, model.module_experts, _adatt_general_residual(model))
    raise TypeError(type(model))


VARIANTS = [(kind, {}) for kind in sorted(CONFIGS)] + [
    ("ple", {"num_task_experts": (1, 2, 3)}),
    ("cgc", {"num_shared_experts": 0}),
    ("cgc", {"gate_bias": False}),
    ("adatt_sp", {"num_task_experts": 1}),
    ("adatt_sp", {"self_exp_res_connect": False}),
    ("adatt_general", {"num_task_experts": (1, 3, 2)}),
    ("adatt_general", {"num_task_experts": 1, "num_shared_experts": 1}),  # constant unit residual
    ("adatt_general", {"num_task_experts": 1, "num_shared_experts": 2}),  # learned scalars for m_i = 1
    ("adatt_general", {"self_exp_res_connect": False}),
    ("cross_stitch", {"stitch_init": "near_identity"}),
]


@pytest.mark.parametrize("kind,changes", VARIANTS, ids=[f"{k}-{c}" for k, c in VARIANTS])
def test_fused_equals_naive_loop(kind, changes):
    model = make(kind, 3, **changes)
    with torch.no_grad():  # move every learned residual away from its init so a mix-up shows
        for name, p in model.named_parameters():
            if "native" in name:
                p.uniform_(-2, 2)
    x = inputs()
    torch.testing.assert_close(model(x).hidden, naive(model, x), atol=1e-6, rtol=1e-5)


def test_adatt_sp_one_expert_adds_native_expert_with_unit_weight():
    model = make("adatt_sp", 3, num_task_experts=1, expert_out_dims=((D_L,),))
    assert not [n for n, _ in model.named_parameters() if "native" in n]  # no v parameter
    bare = make("adatt_sp", 3, num_task_experts=1, expert_out_dims=((D_L,),), self_exp_res_connect=False)
    bare.load_state_dict(model.state_dict())
    x = inputs()
    native = torch.stack([reference.expert(model.levels[0].experts, t, x) for t in range(3)], dim=1)
    torch.testing.assert_close(model(x).hidden, bare(x).hidden + native, atol=1e-6, rtol=0)


def test_adatt_sp_pad_and_add_equals_gate_bmm_plus_own_expert_einsum():
    T, m = 3, 2
    model = make("adatt_sp", T, num_task_experts=m, expert_out_dims=((D_L,),))
    with torch.no_grad():
        model.native_weights.uniform_(-2, 2)
    x = inputs()
    level = model.levels[0]
    experts = torch.stack([reference.expert(level.experts, e, x) for e in range(T * m)], dim=1)  # [B, E, D]
    gates = torch.stack([reference.gate(level.gates, t, x) for t in range(T)], dim=1)  # [B, T, E]
    own = torch.einsum("te,bted->btd", model.native_weights[0], experts.view(B, T, m, D_L))
    torch.testing.assert_close(model(x).hidden, torch.bmm(gates, experts) + own, atol=1e-6, rtol=0)


def test_adatt_sp_without_residual_is_task_pair_mmoe():
    """Each task's gate spans all T*m experts and reads the task's own previous output."""
    model = make("adatt_sp", 3, self_exp_res_connect=False)
    x = inputs()
    owner = [e // 2 for e in range(6)]
    rows = [x] * 3
    for level in model.levels:
        experts = [reference.expert(level.experts, e, rows[owner[e]]) for e in range(6)]
        rows = [reference.mix(reference.gate(level.gates, t, rows[t]), experts) for t in range(3)]
    torch.testing.assert_close(model(x).hidden, torch.stack(rows, 1), atol=1e-6, rtol=1e-5)


def test_adatt_general_structure():
    T, L = 3, 3
    model = make("adatt_general", T, num_task_experts=2, num_shared_experts=2)
    assert isinstance(model, AdaTTGeneral)
    assert [lv.num_gates for lv in model.levels] == [T + 1] * (L - 1) + [T]  # no shared gate on level L
    assert [tuple(v.shape) for v in model.native_weights] == [(L, 2)] * T + [(L - 1, 2)]
    one_level = make("adatt_general", T, expert_out_dims=((D_L,),))
    assert one_level(inputs()).hidden.shape == (B, T, D_L)
    assert len(one_level.native_weights) == T  # the shared unit has L - 1 = 0 levels with a residual
    assert isinstance(make("adatt_general", T, num_shared_experts=0), AdaTTSp)  # m_s = 0 is AdaTT-sp


def test_adatt_general_unit_residual_is_a_constant_on_the_input_device():
    model = make("adatt_general", 3, num_task_experts=1, num_shared_experts=1)
    assert not [n for n, _ in model.named_parameters() if "native" in n]
    # On the meta device a residual built on the CPU would raise a device mismatch.
    out = model.to("meta")(torch.empty(B, D, device="meta"))
    assert out.hidden.device.type == "meta" and out.hidden.shape == (B, 3, D_L)
    double = make("adatt_general", 3, num_task_experts=1, num_shared_experts=1).double()
    x = inputs().double()
    assert double.residual(0, x).dtype == torch.float64
    torch.testing.assert_close(double(x).hidden, naive(double, x), atol=1e-12, rtol=0)


def test_ple_last_level_has_no_shared_gate_and_one_level_equals_cgc():
    T = 3
    model = make("ple", T)
    assert [lv.num_gates for lv in model.levels] == [T + 1, T + 1, T]
    spans = model.levels[0].gates.spans
    assert spans[T] == list(range(model.levels[0].experts.num))  # the shared gate spans all experts
    assert spans[0] == [0, 1, 6, 7]  # task 0: own experts then the shared ones
    ple = make("ple", T, expert_out_dims=((8, D_L),))
    cgc = make("cgc", T, seed=5, num_shared_experts=2)
    assert isinstance(cgc, CGC) and [lv.num_gates for lv in ple.levels] == [T]
    cgc.load_state_dict(ple.state_dict())
    x = inputs()
    torch.testing.assert_close(cgc(x).hidden, ple(x).hidden, atol=0, rtol=0)


def test_cgc_task_experts_get_gradients_only_from_their_own_task():
    T, m, m_s = 3, 2, 1
    model = make("cgc", T, num_task_experts=m, num_shared_experts=m_s)
    hidden = model(inputs()).hidden
    first_layer = model.levels[0].experts.layers[0].weight  # [E, D, 8]
    for j in range(T):
        (grad,) = torch.autograd.grad(hidden[:, j].square().sum(), first_layer, retain_graph=True)
        per_expert = grad.abs().flatten(1).sum(1)
        for k in range(T):
            own = per_expert[k * m:(k + 1) * m]
            assert (own > 0).all() if k == j else (own == 0).all(), (j, k, per_expert)
        assert (per_expert[T * m:] > 0).all()  # shared experts learn from every task


def test_ml_mmoe_with_one_level_equals_mmoe():
    mmoe = make("mmoe", 3)
    ml = make("ml_mmoe", 3, seed=7, expert_out_dims=((8, D_L),))
    assert isinstance(mmoe, MMoE) and type(ml) is MLMMoE
    ml.load_state_dict(mmoe.state_dict())
    x = inputs()
    torch.testing.assert_close(ml(x).hidden, mmoe(x).hidden, atol=0, rtol=0)


def test_mmoe_with_one_expert_equals_shared_bottom():
    mmoe = make("mmoe", 3, num_experts=1)
    bottom = make("shared_bottom", 3, expert_out_dims=((8, D_L),))
    linears = [m for m in bottom.bottom if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for linear, layer in zip(linears, mmoe.levels[0].experts.layers):
            linear.weight.copy_(layer.weight[0].T)
            linear.bias.copy_(layer.bias[0])
    x = inputs()
    out = mmoe(x)
    assert torch.equal(out.gates[0], torch.ones(B, 3, 1))  # a softmax over one expert is 1
    torch.testing.assert_close(out.hidden, bottom(x).hidden, atol=1e-6, rtol=0)


def test_cross_stitch_with_identity_alpha_is_independent_networks():
    T = 3
    model = make("cross_stitch", T)
    with torch.no_grad():
        for alpha in model.stitch:
            alpha.copy_(torch.eye(T))
    x = inputs()
    independent = []
    for k in range(T):
        h = x
        for bank in model.experts:
            h = reference.expert(bank, k, h)
        independent.append(h)
    torch.testing.assert_close(model(x).hidden, torch.stack(independent, 1), atol=1e-6, rtol=0)
    near = make("cross_stitch", T, stitch_init="near_identity").stitch[0]
    torch.testing.assert_close(near, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))


def test_shared_bottom_rows_are_identical():
    hidden = make("shared_bottom", 4)(inputs()).hidden
    for k in range(1, 4):
        assert torch.equal(hidden[:, k], hidden[:, 0])


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_batch_independence(kind):
    model = make(kind, 3)
    x = inputs()
    halves = torch.cat([model(x[: B // 2]).hidden, model(x[B // 2:]).hidden])
    torch.testing.assert_close(model(x).hidden, halves, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_expert_banks_initialise_like_nn_linear(kind):
    """Every fused slice is drawn from nn.Linear's U(±1/sqrt(fan_in)) (docs/MATH.md §2)."""
    model = make(kind, 3)
    for name, p in model.named_parameters():
        if "native" in name or "stitch" in name:
            continue
        fan_in = p.shape[-2] if p.dim() == 3 else None
        if fan_in is None:  # a bank bias [K, d_out] or an nn.Linear: check against its layer's fan-in
            continue
        bound = fan_in ** -0.5
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound, name


def test_gated_mix_gradients():
    """The fusion's hand-written backward (one einsum per gradient) matches finite differences."""
    mix = torch.rand(3, 5, 4, dtype=torch.float64, requires_grad=True)
    experts = torch.randn(4, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GatedMix.apply, (mix, experts))


@pytest.mark.parametrize("bias", [True, False])
def test_bank_matmul_gradients(bias):
    """The bank's hand-written backward matches finite differences (rows, weight and bias)."""
    rows = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(BankMatmul.apply, (rows, weight, b))
