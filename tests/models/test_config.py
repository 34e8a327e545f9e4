"""ModelConfig validation: clear ConfigErrors naming the key path; shipped configs build."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.config import ModelConfig
from models.factory import build_model
from models.inputs import InputSpec, SparseFeature, Task
from models.typed_config import ConfigError, from_dict, to_dict
from tests.models.conftest import input_spec

REPO = Path(__file__).resolve().parents[2]
ADATT = {"type": "adatt_sp", "expert_out_dims": [[8], [6]], "num_task_experts": 2}


def load(section: dict, inputs: InputSpec | None = None) -> ModelConfig:
    cfg = from_dict(ModelConfig, section, "model")
    if inputs is not None:
        cfg.validate_for(inputs)
    return cfg


@pytest.mark.parametrize("section,inputs,message", [
    ({"backbone": {**ADATT, "num_experts_typo": 2}}, None, "model.backbone: unknown key(s) ['num_experts_typo']"),
    ({"towers": [32]}, None, "model: unknown key(s) ['towers']"),
    ({"dml": {"ctfm": {"enable": True}}}, None, "model.dml.ctfm: unknown key(s) ['enable']"),
    ({"backbone": {**ADATT, "type": "moe"}}, None, "model.backbone.type: 'moe' is not one of"),
    ({"backbone": {**ADATT, "num_task_experts": 0}}, None, "model.backbone.num_task_experts: zero experts"),
    ({"backbone": {"type": "mmoe", "expert_out_dims": [[8]], "num_experts": 0}}, None,
     "model.backbone.num_experts: zero experts"),
    ({"backbone": {"type": "ple", "expert_out_dims": [[8]], "num_task_experts": [2, 0, 1],
                   "num_shared_experts": 1}}, None, "model.backbone.num_task_experts[1]: zero experts"),
    ({"backbone": {"type": "ple", "expert_out_dims": [[8], [4]], "num_task_experts": 1, "num_shared_experts": 0}},
     None, "model.backbone.num_shared_experts: ple needs >= 1 shared expert"),
    ({"backbone": {**ADATT, "expert_out_dims": [[8], []]}}, None, "model.backbone.expert_out_dims[1]: a level needs"),
    ({"backbone": {**ADATT, "expert_out_dims": [[8], [0]]}}, None, "model.backbone.expert_out_dims[1][0]: width"),
    ({"backbone": {**ADATT, "expert_out_dims": []}}, None, "model.backbone.expert_out_dims: needs at least one"),
    ({"backbone": {"type": "mmoe", "expert_out_dims": [[8], [4]], "num_experts": 2}}, None, "use ml_mmoe"),
    ({"backbone": {**ADATT, "num_experts": 3}}, None, "model.backbone.num_experts: not used by backbone type"),
    ({"backbone": {**ADATT, "stitch_init": "reference"}}, None, "model.backbone.stitch_init: not used"),
    ({"backbone": {"type": "ml_mmoe", "expert_out_dims": [[8]]}}, None,
     "model.backbone.num_experts: required for backbone type 'ml_mmoe'"),
    ({"backbone": {**ADATT, "num_task_experts": [2, 2, 2]}}, None, "adatt_sp needs one int"),
    ({"backbone": {**ADATT, "type": "adatt_general", "num_task_experts": [1, 2, 2], "num_shared_experts": 0}},
     None, "model.backbone.num_shared_experts: m_s = 0 makes adatt_general AdaTT-sp"),
    ({"backbone": ADATT, "dml": {"ctfm": {"merge": "add", "d_v": 4}}}, None,
     "model.dml.ctfm.d_v: merge 'add' needs d_v == D_L = 6"),
    ({"tower_mlp": [32, 0]}, None, "model.tower_mlp[1]: width must be >= 1"),
    ({"embedding": {"init": "normal"}}, None, "model.embedding.scale: init 'normal' needs a scale"),
    ({"embedding": {"tables": {"t_a": {"init": "default", "scale": 0.1}}}}, None,
     "model.embedding.tables.t_a.scale: init 'default'"),
    ({"dml": {"gkd": {"enabled": True, "label_loss": False, "mutual": False}}}, None, "would never be trained"),
    ({"dml": {"gkd": {"tau": 0}}}, None, "model.dml.gkd.tau: must be > 0"),
    ({"loss": {"loss_norm": "batch"}}, None, "model.loss.loss_norm: 'batch' is not one of"),
    # checks that need the dataset
    ({"backbone": {"type": "ple", "expert_out_dims": [[8]], "num_task_experts": [1, 2], "num_shared_experts": 1}},
     input_spec(3), "model.backbone.num_task_experts: 2 counts for 3 tasks"),
    ({"dml": {"ctfm": {"enabled": True}}}, input_spec(1), "model.dml.ctfm: with one task and include_self=false"),
    ({"loss": {"task_weights": {"t9": 1.0}}}, input_spec(2), "model.loss.task_weights: unknown task(s) ['t9']"),
    ({"dml": {"gkd": {"mutual_weight": {"t0": 0.1}}}}, input_spec(2),
     "model.dml.gkd.mutual_weight: no value for task(s) ['t1']"),
    ({"dense_mlp": [8]}, input_spec(2, dense_dim=0), "model.dense_mlp: the dataset has no dense features"),
    ({"embedding": {"tables": {"t_zz": {"init": "normal", "scale": 0.1}}}}, input_spec(2),
     "model.embedding.tables: unknown table(s) ['t_zz']"),
])
def test_config_errors_name_the_key_path(section, inputs, message):
    with pytest.raises(ConfigError) as err:
        load(section, inputs)
    assert message in str(err.value)


def test_defaults_are_the_census_adatt_setting_and_round_trip():
    cfg = ModelConfig()
    assert cfg.backbone.type == "adatt_sp" and cfg.backbone.expert_out_dims == ((128,), (64,))
    assert cfg.backbone.num_task_experts == 2 and cfg.tower_mlp == (32,)
    assert not cfg.dml.ctfm.enabled and not cfg.dml.gkd.enabled and cfg.loss.loss_norm == "local"
    assert load(yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg


def test_global_loss_norm_needs_an_injected_reducer():
    cfg = load({"backbone": ADATT, "loss": {"loss_norm": "global"}})
    with pytest.raises(ConfigError, match="model.loss.loss_norm"):
        build_model(cfg, input_spec(2), ebc_device="cpu")


CENSUS = InputSpec(
    dense_dim=7,
    sparse_features=tuple(SparseFeature(f"c{i}", 50, 8) for i in range(33)),
    tasks=(Task("income"), Task("never_married"), Task("education")),
)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("census_*.yaml")), ids=lambda p: p.name)
def test_shipped_census_configs_build(path):
    cfg = load(yaml.safe_load(path.read_text())["model"], CENSUS)
    model = build_model(cfg, CENSUS)  # EBC on meta, as the trainer builds it
    assert next(model.sparse_arch.ebc.parameters()).device.type == "meta"
    assert model.backbone.out_dim == cfg.backbone.out_dim


def test_all_census_configs_are_shipped():
    names = {p.name for p in (REPO / "configs").glob("census_*.yaml")}
    expected = {f"census_{n}.yaml" for n in ("adatt", "adatt_dml", "ple", "mmoe", "mlmmoe", "shared_bottom",
                                              "cross_stitch")}
    expected |= {f"census_t5_{m}_{n}.yaml" for m in ("mlmmoe", "ple", "adatt") for n in (6, 9)}
    assert expected <= names
