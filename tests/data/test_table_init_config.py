"""`mtrec init-config`: a complete, explicit config that loads with `load_job_config` and trains."""
from __future__ import annotations

import pytest
import yaml

from models.typed_config import ConfigError, to_dict
from pipeline.config import load_job_config
from pipeline.config_init import MODELS, build_config, init_config
from pipeline.data.schema import DatasetSchema
from pipeline.data.table.importer import prepare_table
from pipeline.data.table.spec import auto_embedding_dim
from tests.conftest import mtrec
from tests.data.test_table_importer import HEADER, ROWS, SPEC, write_spec


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hard")
    (directory / "log.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    prepare_table(write_spec(directory, SPEC), directory / "ds")
    return directory / "ds"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dml", [False, True], ids=["base", "dml"])
def test_written_config_is_complete_and_loads_as_built(hard_dataset, tmp_path, model, dml):
    out = tmp_path / "job.yaml"
    init_config(str(hard_dataset), model, str(out), dml=dml)
    built = build_config(DatasetSchema.load(hard_dataset), model, dml)
    assert load_job_config(out) == built
    assert yaml.safe_load(out.read_text()) == to_dict(built)  # every key written, none left to a default
    assert built.train.early_stopping.task == "click"
    assert built.model.loss.task_weights == {"click": 1.0, "buy": 1.0}
    assert (built.model.dml.ctfm.enabled, built.model.dml.gkd.enabled) == (dml, dml)


def test_comments_and_watch(hard_dataset, tmp_path):
    out = tmp_path / "job.yaml"
    init_config(str(hard_dataset), "adatt_sp", str(out), watch="buy")
    text = out.read_text()
    assert "  dim: null  # null = each table's dim from schema.yaml (user 32, city 8, tags 8, age_band 8)" in text
    assert "num_experts: null  # not used by adatt_sp" in text
    assert load_job_config(out).train.early_stopping.task == "buy"
    with pytest.raises(ConfigError, match="--watch: 'price' is not a binary task"):
        init_config(str(hard_dataset), "adatt_sp", str(out), watch="price")


def test_embedding_dim_rule():
    assert [auto_embedding_dim(n) for n in (2, 10, 44, 1001, 10**6, 10**9)] == [8, 12, 16, 32, 64, 64]


@pytest.mark.slow
def test_init_config_then_train(hard_dataset, tmp_path):
    config = tmp_path / "job.yaml"
    printed = mtrec("init-config", "--data", str(hard_dataset), "--model", "ple", "--dml", "--out", str(config)).stdout
    assert f"wrote {config}: ple + DML" in printed
    mtrec("train", "--config", str(config), "--data", str(hard_dataset), "--out", str(tmp_path / "run"),
          "--max-steps", "2")
    assert (tmp_path / "run" / "summary.json").is_file()
