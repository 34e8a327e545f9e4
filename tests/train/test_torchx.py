"""TorchX components: the AppDef they build, and real local_cwd runs as 1x2 and 2x1."""
from __future__ import annotations

import json
import shlex
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


def cli_args(app) -> list[str]:
    """What the replica's torchrun runs after `-m pipeline`."""
    tokens = shlex.split(app.roles[0].args[-1])
    assert tokens[tokens.index("-m") + 1] == "pipeline"
    return tokens[tokens.index("-m") + 2:]


def test_evaluate_component_passes_its_options():
    args = cli_args(evaluate(checkpoint="r", data="d/test", out="rep", config="c.yaml", which="latest",
                             write_predictions=True, auc_mode="exact"))
    assert args[0] == "evaluate" and args[-1] == "--write-predictions"
    assert dict(zip(args[1:-1:2], args[2:-1:2])) == {"--checkpoint": "r", "--which": "latest", "--data": "d/test",
                                                     "--out": "rep", "--auc-mode": "exact", "--config": "c.yaml"}


def test_evaluate_component_defaults_to_the_best_checkpoint_and_the_stored_config():
    args = cli_args(evaluate(checkpoint="r", data="d/test", out="rep"))
    assert dict(zip(args[1::2], args[2::2])) == {"--checkpoint": "r", "--which": "best", "--data": "d/test",
                                                 "--out": "rep", "--auc-mode": "bounded"}


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
