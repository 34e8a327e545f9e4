"""bf16 autocast: the fused custom-backward blocks (BankMatmul, GatedMix) and whole models train
under torch.autocast with fp32 master weights, with gradients equal to fp32's within bf16 tolerance."""
from __future__ import annotations

import pytest
import torch

from models.blocks import BankLinear, BankMatmul, GatedMix
from models.config import ModelConfig
from models.factory import build_model
from models.typed_config import from_dict
from tests.models.conftest import input_spec, random_batch

# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%); sums over a few dozen products
# stay within a few percent of the fp32 result.
REL_TOL = 3e-2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def grads(fn, *tensors: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    """d sum(fn(...) * probe) / d tensors, with the forward under bf16 autocast or in fp32."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*leaves)
    probe = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * probe).sum().backward()
    return [leaf.grad for leaf in leaves]


def test_bank_matmul_backward_under_autocast_matches_fp32():
    g = torch.Generator().manual_seed(0)
    rows, weight, bias = torch.randn(3, 32, 24, generator=g), torch.randn(3, 24, 5, generator=g), torch.randn(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert BankMatmul.apply(rows, weight, bias).dtype == torch.bfloat16  # autocast really is on
    fast = grads(BankMatmul.apply, rows, weight, bias, autocast=True)
    exact = grads(BankMatmul.apply, rows, weight, bias, autocast=False)
    for got, want in zip(fast, exact):
        assert got.dtype == torch.float32  # fp32 inputs (master weights) get fp32 gradients
        assert rel_err(got, want) < REL_TOL
    # and the same as autograd's own backward of the same ops under autocast
    reference = grads(lambda r, w, b: torch.baddbmm(b.unsqueeze(1), r, w), rows, weight, bias, autocast=True)
    for got, want in zip(fast, reference):
        assert rel_err(got, want) < REL_TOL


def test_gated_mix_backward_under_autocast_matches_fp32():
    g = torch.Generator().manual_seed(1)
    mix = torch.softmax(torch.randn(2, 32, 4, generator=g), dim=-1)
    experts = torch.randn(4, 32, 16, generator=g)
    fast = grads(GatedMix.apply, mix, experts, autocast=True)
    exact = grads(GatedMix.apply, mix, experts, autocast=False)
    for got, want in zip(fast, exact):
        assert got.dtype == torch.float32
        assert rel_err(got, want) < REL_TOL


def test_bank_linear_with_input_rows_trains_under_autocast():
    layer = BankLinear(4, 8, 3, input_rows=[0, 0, 1, 1])  # the BankMatmul path
    x = torch.randn(2, 16, 8, requires_grad=True)
    fast = grads(layer, x, autocast=True)[0]
    fast_weight = layer.weight.grad.clone()
    layer.zero_grad()
    exact = grads(layer, x, autocast=False)[0]
    assert rel_err(fast, exact) < REL_TOL
    assert layer.weight.grad.dtype == torch.float32 and rel_err(fast_weight, layer.weight.grad) < REL_TOL


@pytest.mark.parametrize("backbone", [
    {"type": "adatt_sp", "expert_out_dims": [[16], [8]], "num_task_experts": 2},
    {"type": "ple", "expert_out_dims": [[16], [8]], "num_task_experts": 1, "num_shared_experts": 2},
])
def test_model_gradients_under_autocast_match_fp32(backbone):
    spec = input_spec(3)
    cfg = from_dict(ModelConfig, {"backbone": backbone, "tower_mlp": [8]})
    batch = random_batch(spec, batch_size=64)
    results = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, spec, ebc_device="cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, outputs = model(batch)
        loss.backward()
        dense = {n: p for n, p in model.named_parameters() if not n.startswith("sparse_arch")}
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in dense.values())
        results.append((float(loss.detach()), {n: p.grad for n, p in dense.items()}))
    (loss32, grads32), (loss16, grads16) = results
    assert loss16 == pytest.approx(loss32, rel=REL_TOL)
    for name, want in grads32.items():
        if want.norm() > 1e-6:
            assert rel_err(grads16[name], want) < 0.1, name  # deep products: a looser, still bf16-scale bound
