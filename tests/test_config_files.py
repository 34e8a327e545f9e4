"""Config files: `extends` composition (merge rules, chains, cycles, errors naming the file) and
the shipped configs, which must resolve exactly as they did before they shared a recipe."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from models.typed_config import ConfigError
from pipeline.config import deep_merge, load_job_config, read_config_layers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# The training recipe every census config carried before configs/recipes/census.yaml held it once.
CENSUS_RECIPE_BEFORE = {
    "train": {"seed": 0, "epochs": 8, "batch_size": 1024, "dense_optimizer": {"name": "adam", "lr": 0.001},
              "sparse_optimizer": {"name": "rowwise_adagrad", "lr": 0.05},
              "early_stopping": {"task": "education", "metric": "auc", "patience": 2},
              "keep_last_checkpoints": 2, "log_every_steps": 50},
    "data": {"num_workers": 1},
    "sharding": {"default": {"sharding_types": ["table_wise"]}},
    "eval": {"batch_size": 8192, "auc_mode": "bounded"},
}
# The recipe since docs/RESULTS.md's ablation: 15 epochs, early stopping on the mean of the tasks,
# data-parallel (Adam-trained) embedding tables.
CENSUS_RECIPE = {**CENSUS_RECIPE_BEFORE, "train": {
    **CENSUS_RECIPE_BEFORE["train"], "epochs": 15, "early_stopping": {"task": "mean", "metric": "auc", "patience": 2}},
    "sharding": {"default": {"sharding_types": ["data_parallel"]}}}
# sha256 (first 16 hex digits) of json.dumps(mapping, sort_keys=True) of each file's yaml.safe_load
# at commit 32d502a, before the recipe was factored out: the merged mapping must be the same.
BEFORE = {
    "census_adatt.yaml": "5e73bd7ab66d5c4e",
    "census_adatt_dml.yaml": "6b39ffea51e1af97",
    "census_cross_stitch.yaml": "f3551011f623d332",
    "census_mlmmoe.yaml": "fd08a2ff10b87938",
    "census_mmoe.yaml": "b34a9d6972422d71",
    "census_ple.yaml": "c3b681303fd3ff3a",
    "census_shared_bottom.yaml": "bbcb6f9ac0721c54",
    "census_t5_adatt_6.yaml": "19c5576cc6ad2567",
    "census_t5_adatt_9.yaml": "f5489a7bc3e767eb",
    "census_t5_mlmmoe_6.yaml": "fd08a2ff10b87938",
    "census_t5_mlmmoe_9.yaml": "2f2cb892806e7c6d",
    "census_t5_ple_6.yaml": "c3b681303fd3ff3a",
    "census_t5_ple_9.yaml": "407487e289ae547f",
}


def _digest(mapping: dict) -> str:
    return hashlib.sha256(json.dumps(mapping, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_shipped_census_config_resolves_as_before(name):
    layers = read_config_layers(CONFIGS / name)
    assert [p.name for p, _ in layers] == ["census.yaml", name]
    merged = layers[-1][1]
    assert {k: v for k, v in merged.items() if k != "model"} == CENSUS_RECIPE
    assert _digest({**merged, **CENSUS_RECIPE_BEFORE}) == BEFORE[name]  # the model section as before
    load_job_config(CONFIGS / name)


def test_every_census_config_is_a_model_on_the_recipe():
    names = sorted(p.name for p in CONFIGS.glob("census_*.yaml"))
    assert names == sorted(BEFORE)
    for name in names:
        text = (CONFIGS / name).read_text()
        assert "extends: recipes/census.yaml\n" in text and "\ntrain:" not in text, name


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_extends_merges_mappings_and_replaces_lists_along_a_chain(tmp_path):
    _write(tmp_path, {
        "base/root.yaml": "train: {epochs: 2, batch_size: 64, dense_optimizer: {name: sgd, lr: 0.1}}\n"
                          "model: {tower_mlp: [32, 16]}\n",
        "base/mid.yaml": "extends: root.yaml\ntrain: {dense_optimizer: {lr: 0.2}}\n",  # relative to base/
        "job.yaml": "extends: base/mid.yaml\ntrain: {epochs: 5}\nmodel: {tower_mlp: [8]}\n",
    })
    layers = read_config_layers(tmp_path / "job.yaml")
    assert [p.name for p, _ in layers] == ["root.yaml", "mid.yaml", "job.yaml"]
    cfg = load_job_config(tmp_path / "job.yaml", ["train.batch_size=32"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (5, 32)
    assert (cfg.train.dense_optimizer.name, cfg.train.dense_optimizer.lr) == ("sgd", 0.2)
    assert cfg.model.tower_mlp == (8,)  # a list is replaced, never merged
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}, "d": None})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": None}


def test_an_extends_cycle_names_every_file(tmp_path):
    _write(tmp_path, {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: c.yaml\n", "c.yaml": "extends: a.yaml\n"})
    with pytest.raises(ConfigError) as info:
        load_job_config(tmp_path / "a.yaml")
    a, b, c = (str(tmp_path / n) for n in ("a.yaml", "b.yaml", "c.yaml"))
    assert str(info.value) == f"{c}: extends cycle: {a} -> {b} -> {c} -> {a}"


def test_extends_errors_name_the_file(tmp_path):
    _write(tmp_path, {"missing.yaml": "extends: nowhere.yaml\n", "bad.yaml": "extends: [a, b]\n",
                      "recipe.yaml": "train: {epoch: 3}\n", "job.yaml": "extends: recipe.yaml\nmodel: {}\n"})
    with pytest.raises(ConfigError, match=r"missing\.yaml: extends: .*nowhere\.yaml: no such config file"):
        load_job_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: extends: expected a file path relative to this file"):
        load_job_config(tmp_path / "bad.yaml")
    # a bad key in the base is blamed on the base, not on the file that extends it
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'recipe.yaml'}: train: unknown key\(s\) \['epoch'\]"):
        load_job_config(tmp_path / "job.yaml")


def test_a_bad_key_in_the_file_is_blamed_on_the_file_even_with_overrides(tmp_path):
    _write(tmp_path, {"c.yaml": "train: {epoch: 3}\n"})
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'c.yaml'}: train: unknown key"):
        load_job_config(tmp_path / "c.yaml", ["train.seed=1"])


def test_the_bad_override_is_named_among_good_ones(tmp_path):
    _write(tmp_path, {"c.yaml": "train: {epochs: 1}\n"})
    with pytest.raises(ConfigError, match=r"^override 'train.epochs=0': train.epochs: must be >= 1"):
        load_job_config(tmp_path / "c.yaml", ["train.seed=2", "train.epochs=0"])
    with pytest.raises(ConfigError, match=r"^override 'model=3': model: expected a mapping for ModelConfig, got int"):
        load_job_config(tmp_path / "c.yaml", ["model=3"])
