"""TorchX components: the AppDef they build, and real local_cwd runs as 1x2 and 2x1."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.components import evaluate, train
from tests.conftest import VENV_BIN, run_command

CONFIG = str(Path(__file__).with_name("small_adatt.yaml"))


def test_train_component_runs_the_cli_under_torchrun():
    app = train(config="c.yaml", data="d", out="o", max_steps=5, seed=3, overrides=["train.batch_size=64"],
                j="2x1", max_restarts=2, mounts=["type=bind", "src=/h", "dst=/runs"])
    role = app.roles[0]
    cmd = role.args[-1]
    assert role.num_replicas == 2
    assert cmd.startswith("torchrun --max-restarts 2 ")
    assert "-m pipeline train --config c.yaml --data d --out o --max-steps 5 --seed 3 train.batch_size=64" in cmd
    assert "--nnodes 2" in cmd and "--nproc_per_node 1" in cmd
    assert role.mounts and role.mounts[0].dst_path == "/runs"


def test_evaluate_component_passes_its_options():
    cmd = evaluate(config="c.yaml", checkpoint="r", data="d/test", out="rep", write_predictions=True,
                   auc_mode="exact").roles[0].args[-1]
    assert "-m pipeline evaluate --config c.yaml --checkpoint r --data d/test --out rep --auc-mode exact " \
           "--write-predictions" in cmd


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["1x2", "2x1"])
def test_local_cwd_job_trains_and_checkpoints(census_dir, tmp_path, topology):
    run = tmp_path / "run"
    run_command([str(VENV_BIN / "torchx"), "run", "-s", "local_cwd", "-cfg", f"log_dir={tmp_path / 'logs'}",
                 "pipeline/components.py:train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run),
                 "--max_steps", "10", "-j", topology])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["world_size"] == 2
    assert (run / "checkpoints" / "step_00000010" / "COMPLETE").exists()
