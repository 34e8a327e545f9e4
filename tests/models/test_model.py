"""The top-level MultiTaskModel: pipeline contract, sparse arch, training, reproducibility."""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from models.config import ModelConfig
from models.factory import build_model
from models.inputs import InputSpec, SparseFeature, Task
from models.multitask_model import MultiTaskModel
from models.typed_config import from_dict
from tests.models.conftest import input_spec, random_batch
from tests.models.test_backbones import CONFIGS

BACKBONES = {
    kind: {k: v for k, v in {
        "type": kind, "expert_out_dims": [list(level) for level in cfg.expert_out_dims],
        "num_task_experts": cfg.num_task_experts, "num_shared_experts": cfg.num_shared_experts,
        "num_experts": cfg.num_experts}.items() if v is not None}
    for kind, cfg in CONFIGS.items()
}
DML_ON = {"ctfm": {"enabled": True}, "gkd": {"enabled": True}}


def build(spec: InputSpec, backbone: str = "adatt_sp", seed: int = 0, **section) -> MultiTaskModel:
    cfg = from_dict(ModelConfig, {"backbone": BACKBONES[backbone], "tower_mlp": [5], **section}, "model")
    torch.manual_seed(seed)
    return build_model(cfg, spec, ebc_device="cpu")


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5])
def test_outputs_contract(num_tasks):
    spec = input_spec(num_tasks, regression=num_tasks > 1)
    batch = random_batch(spec)
    for dml in ({}, {"gkd": {"enabled": True}}):
        loss, out = build(spec, dml=dml)(batch)
        assert loss.dim() == 0 and loss.requires_grad
        assert out["loss_per_task"].shape == (num_tasks,)
        for key in ("logits", "predictions", "labels", "masks"):
            assert out[key].shape == (16, num_tasks), key
        assert out["weights"].shape == (16,) and torch.equal(out["keys"], batch.keys)
        assert not any(v.requires_grad for v in out.values())
        binary = [t.kind == "binary" for t in spec.tasks]
        for k, is_binary in enumerate(binary):
            expected = torch.sigmoid(out["logits"][:, k]) if is_binary else out["logits"][:, k]
            torch.testing.assert_close(out["predictions"][:, k], expected)


def test_ebc_is_the_only_embedding_collection_and_lives_on_meta_by_default():
    spec = input_spec(3)
    cfg = from_dict(ModelConfig, {"backbone": BACKBONES["ple"]}, "model")
    model = build_model(cfg, spec)
    ebcs = [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]
    assert ebcs == [model.sparse_arch.ebc]
    assert {p.device.type for p in model.sparse_arch.ebc.parameters()} == {"meta"}
    assert {p.device.type for n, p in model.named_parameters() if not n.startswith("sparse_arch")} == {"cpu"}
    names = [c.name for c in model.sparse_arch.ebc.embedding_bag_configs()]
    assert names == ["t_a", "t_b"]


def test_forward_is_fx_traceable_with_the_kjt_taken_straight_from_the_batch():
    """TorchRec's pipeline traces the top-level forward (modules without an EBC are leaves) and
    only pipelines an EBC whose input is a plain attribute of the batch."""
    model = build(input_spec(3), dml=DML_ON)

    class PipelineLikeTracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualified_name):
            return qualified_name not in ("", "sparse_arch")

    graph = PipelineLikeTracer().trace(model)
    (ebc_call,) = [n for n in graph.nodes if n.op == "call_module" and n.target == "sparse_arch.ebc"]
    (kjt,) = ebc_call.args
    assert kjt.op == "call_function" and kjt.target is getattr and kjt.args[1] == "sparse_features"
    assert kjt.args[0].op == "placeholder"


def test_embedding_init_options():
    spec = InputSpec(dense_dim=0, sparse_features=(SparseFeature("a", 4000, 8), SparseFeature("b", 4000, 8),
                                                   SparseFeature("c", 100, 8)), tasks=(Task("t"),))
    model = build(spec, embedding={"init": "normal", "scale": 0.05, "dim": 6,
                                   "tables": {"t_b": {"init": "uniform", "scale": 0.2}, "t_c": {"init": "default"}}})
    tables = {name: bag.weight for name, bag in model.sparse_arch.ebc.embedding_bags.items()}
    assert tables["t_a"].shape == (4000, 6) and model.sparse_arch.out_dim == 18
    assert abs(tables["t_a"].std().item() - 0.05) < 0.005 and abs(tables["t_a"].mean().item()) < 0.005
    assert tables["t_b"].abs().max() <= 0.2 and tables["t_b"].abs().max() > 0.19
    assert tables["t_c"].abs().max() <= 0.1 and tables["t_c"].abs().max() > 0.09  # U(±sqrt(1/100))


def test_dense_only_inputs_have_no_sparse_arch():
    spec = input_spec(2, sparse=False, dense_dim=5)
    model = build(spec, dense_mlp=[7])
    assert model.sparse_arch is None
    loss, out = model(random_batch(spec))
    assert torch.isfinite(loss) and out["logits"].shape == (16, 2)
    assert model.backbone.levels[0].experts.layers[0].weight.shape[1] == 7  # D = dense_mlp width


@pytest.mark.parametrize("backbone", ["adatt_general", "ple", "mmoe"])
def test_gate_weights_diagnostics(backbone):
    spec = input_spec(3)
    model = build(spec, backbone)
    gates = model.gate_weights(random_batch(spec))
    assert len(gates) == len(model.backbone.levels)
    for level, g in zip(model.backbone.levels, gates):
        assert g.shape == (level.num_gates, level.experts.num) and not g.requires_grad
        torch.testing.assert_close(g.sum(-1), torch.ones(level.num_gates))
    assert build(spec, "cross_stitch").gate_weights(random_batch(spec)) == []


def test_task_weights_from_dataset_and_config():
    spec = InputSpec(dense_dim=3, sparse_features=(), tasks=(Task("a", loss_weight=2.0), Task("b"), Task("c")))
    batch = random_batch(spec)
    loss, out = build(spec, loss={"task_weights": {"c": 0.0}})(batch)
    torch.testing.assert_close(loss, 2 * out["loss_per_task"][0] + out["loss_per_task"][1])


def test_masked_rows_do_not_change_the_task_loss():
    spec = input_spec(3)
    batch = random_batch(spec)
    batch.masks[::2, 1] = 0
    model = build(spec, dml=DML_ON)
    loss, out = model(batch)
    batch.labels[::2, 1] = 1 - batch.labels[::2, 1]
    loss2, out2 = model(batch)
    assert torch.equal(out["loss_per_task"], out2["loss_per_task"]) and torch.equal(loss, loss2)
    assert torch.equal(out2["masks"], batch.masks)  # metrics see the same masks


def synthetic_batches(spec: InputSpec, n: int = 4, batch_size: int = 64) -> list:
    """Learnable labels: task k is positive when a fixed mix of dense features and per-id effects is > 0."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(spec.dense_dim, len(spec.tasks), generator=g)
    id_effect = torch.randn(20, len(spec.tasks), generator=g) * 2
    batches = []
    for i in range(n):
        batch = random_batch(spec, batch_size, seed=100 + i)
        ids = batch.sparse_features["a"]
        first_id = torch.zeros(batch_size, dtype=torch.long)
        has = ids.lengths() > 0
        first_id[has] = ids.values()[ids.offsets()[:-1][has]]
        score = batch.dense @ w + torch.where(has.unsqueeze(1), id_effect[first_id], 0.0)
        batch.labels = (score > 0).float()
        batches.append(batch)
    return batches


def train(model: MultiTaskModel, batches: list, epochs: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(epochs):
        for batch in batches:
            optimizer.zero_grad()
            loss, _ = model(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dml", [False, True])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_trains_with_a_real_ebc_and_falling_loss(backbone, dml):
    spec = input_spec(3)
    model = build(spec, backbone, dml=DML_ON if dml else {}, embedding={"init": "normal", "scale": 0.1})
    batches = synthetic_batches(spec)
    losses = train(model, batches, epochs=10)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, (first, last)
    assert model.sparse_arch.ebc.embedding_bags["t_a"].weight.grad is not None


def test_seeded_training_is_bit_for_bit_reproducible():
    spec = input_spec(3)
    batches = synthetic_batches(spec, n=2)
    runs = []
    for _ in range(2):
        model = build(spec, "adatt_general", seed=123, dml=DML_ON)
        losses = train(model, batches, epochs=2)
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())
    other = build(spec, "adatt_general", seed=124, dml=DML_ON)
    assert not torch.equal(other.state_dict()["towers.head.weight"], runs[0][1]["towers.head.weight"])
