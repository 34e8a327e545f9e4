"""Job config validation: errors at start-up, naming the key path."""
from pathlib import Path

import pytest

from models.inputs import InputSpec, SparseFeature, Task
from models.typed_config import ConfigError
from pipeline.config import ShardingConfig, TableShardingConfig, apply_overrides, load_job_config
from pipeline.runtime.sharding import build_constraints

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
INPUTS = InputSpec(dense_dim=2, sparse_features=(SparseFeature("a", 10, 4), SparseFeature("b", 20, 4)),
                   tasks=(Task("x"), Task("y")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_job_config(path)
    assert cfg.train.batch_size >= 1


def test_unknown_key_names_the_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batch_sise: 10\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train: unknown key\(s\) \['batch_sise'\]"):
        load_job_config(p)


def test_wrong_type_names_the_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  dense_optimizer: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"train.dense_optimizer.lr: expected a number"):
        load_job_config(p)


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 1}\n")
    cfg = load_job_config(p, ["train.epochs=3", "train.dense_optimizer.lr=0.01", "train.max_steps=null"])
    assert (cfg.train.epochs, cfg.train.dense_optimizer.lr, cfg.train.max_steps) == (3, 0.01, None)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_exponent_notation_is_a_number_in_files_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-5` as the string '1e-5'; users write it in configs and overrides."""
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text("train:\n  dense_optimizer: {lr: 1e-3, weight_decay: 5E-6}\n  sparse_optimizer: {lr: .5e-1}\n")
    cfg = load_job_config(p, ["train.dense_optimizer.weight_decay=1e-5"])
    assert (cfg.train.dense_optimizer.lr, cfg.train.dense_optimizer.weight_decay) == (1e-3, 1e-5)
    assert cfg.train.sparse_optimizer.lr == 0.05
    assert yaml.safe_load("1e-5") == "1e-5"  # the plain loader is left as it is (no global change)
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer"):
        load_job_config(p, ["train.epochs=1e1"])  # a float where an integer goes is still refused
    with pytest.raises(ConfigError, match=r"train.dense_optimizer.lr: expected a number, got '1e-5x'"):
        load_job_config(p, ["train.dense_optimizer.lr=1e-5x"])


def test_yes_no_on_off_and_dates_are_text_and_only_true_false_are_booleans(tmp_path):
    from models.typed_config import parse_yaml

    assert parse_yaml("[yes, no, on, off, Y, true, False]", "x") == ["yes", "no", "on", "off", "Y", True, False]
    assert parse_yaml("[2024-01-08, 2024-01-09 10:00:00]", "x") == ["2024-01-08", "2024-01-09 10:00:00"]
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  dml:\n    ctfm: {enabled: yes}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: model.dml.ctfm.enabled: expected true/false, got 'yes'"):
        load_job_config(p)


def test_what_mtrec_writes_it_reads_back_unchanged():
    """RUN/config.yaml and schema.yaml are written by dump_yaml and read by parse_yaml: a string that
    YAML 1.2 reads as a number ('1e5') is quoted on the way out."""
    from models.typed_config import dump_yaml, parse_yaml

    data = {"names": ["1e5", "yes", "010", "1:30", "on", "2024-01-08", "-3E2"], "lr": 1e-5, "flag": True}
    assert parse_yaml(dump_yaml(data, sort_keys=False), "x") == data
    assert parse_yaml(dump_yaml(data, default_flow_style=True), "x") == data


@pytest.mark.parametrize("text, meaning", [("010", "octal, 8"), ("1:30", "base 60, 90")])
def test_yaml_1_1_octal_and_base_60_integers_are_refused_naming_file_and_line(tmp_path, text, meaning):
    p = tmp_path / "c.yaml"
    p.write_text(f"train:\n  epochs: 1\n  batch_size: {text}\n")
    with pytest.raises(ConfigError, match=rf"c.yaml: '{text}' at line 3 is ambiguous \(YAML 1.1 reads it as {meaning}\)"):
        load_job_config(p)
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    with pytest.raises(ConfigError, match=rf"override 'train.batch_size={text}': '{text}' at line 1 is ambiguous"):
        load_job_config(empty, [f"train.batch_size={text}"])
    p.write_text(f"train:\n  batch_size: '{text}'\n")  # quoted: the text, refused by the type check
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer"):
        load_job_config(p)


def test_row_wise_on_cpu_is_rejected_naming_the_table():
    cfg = ShardingConfig(tables={"t_b": TableShardingConfig(sharding_types=("row_wise",))})
    with pytest.raises(ConfigError, match=r"sharding.tables.t_b: .*\['row_wise'\] for table t_b need GPUs"):
        build_constraints(cfg, INPUTS, "cpu")
    assert "t_b" in build_constraints(cfg, INPUTS, "cuda")


def test_unknown_table_is_rejected():
    cfg = ShardingConfig(tables={"t_zzz": TableShardingConfig(sharding_types=("table_wise",))})
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['t_zzz'\]"):
        build_constraints(cfg, INPUTS, "cpu")


def test_default_constraints_apply_to_every_table():
    cfg = ShardingConfig(default=TableShardingConfig(sharding_types=("column_wise",)))
    cons = build_constraints(cfg, INPUTS, "cpu")
    assert {k: v.sharding_types for k, v in cons.items()} == {"t_a": ["column_wise"], "t_b": ["column_wise"]}


def test_a_resumed_run_may_change_budgets_and_plans_but_not_what_it_trains(tmp_path):
    from pipeline.config import check_resumed_config, dump_job_config

    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 1}\n")
    saved = dump_job_config(load_job_config(p))
    allowed = load_job_config(p, ["train.epochs=3", "train.early_stopping.patience=5", "data.num_workers=0",
                                  "sharding.default.sharding_types=[column_wise]", "eval.batch_size=64"])
    lines = check_resumed_config(saved, "ckpt/config.yaml", allowed, accept=False)
    assert len(lines) == 5 and "train.epochs: 1 -> 3" in lines
    older = saved.replace("  precision: fp32\n", "")  # written before the key existed: its default
    assert older != saved and check_resumed_config(older, "x", load_job_config(p), accept=False) == []
    for override, key in (("model.tower_mlp=[8]", "model.tower_mlp"), ("train.seed=1", "train.seed"),
                          ("train.batch_size=64", "train.batch_size"),
                          ("train.early_stopping.task=mean", "train.early_stopping.task")):
        changed = load_job_config(p, [override, "train.epochs=3"])
        with pytest.raises(ConfigError, match=rf"ckpt/config.yaml: the run was trained with another config \({key}: "):
            check_resumed_config(saved, "ckpt/config.yaml", changed, accept=False)
        assert any(line.startswith(key) for line in check_resumed_config(saved, "x", changed, accept=True))



def test_a_dataset_identity_compares_the_encoding_only_where_both_have_one():
    from pipeline.train.trainer import same_dataset

    old = {"name": "d", "rows": {"train": 10}}  # a checkpoint written before the digest existed
    new = {**old, "encoding": "a" * 64}
    assert same_dataset(old, new) and same_dataset(new, old) and same_dataset(new, dict(new))
    assert not same_dataset(new, {**new, "encoding": "b" * 64})
    assert not same_dataset(new, {**new, "rows": {"train": 11}}) and not same_dataset(None, new)
