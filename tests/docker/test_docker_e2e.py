"""End to end in containers: the image is built (layer-cached), `train` runs as a 2-container TorchX
local_docker job (-j 2x1, c10d rendezvous over TorchX's docker network) writing checkpoints to a
bind-mounted host directory, `evaluate` runs in a container on that checkpoint and writes its report
to the host, and both match the same seeded job run with local_cwd.

Why the metrics must match tightly: same code, same wheels (the image's torch/fbgemm are the host's
files), same world size and seed, so both runs see the same batches and do the same float operations.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.docker.conftest import CONTAINER_UID, container_readable_tree, container_writable_dir
from tests.docker.torchx_jobs import bind_mount, free_port, mounts_arg, torchx_run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# ---- the CLI / component contract (pipeline/components.py); adjust here only --------------------------
TRAIN = "pipeline/components.py:train"
EVALUATE = "pipeline/components.py:evaluate"
CONFIG = "configs/census_adatt.yaml"  # relative: the repo root for local_cwd, /opt/mtrec in the image
MAX_STEPS = 20
SEED = 7
OVERRIDES = ["train.validation_max_batches=4"]  # keep in-training validation short
THREADS = ["--env", "OMP_NUM_THREADS=1"]  # the same intra-op threads in containers and on the host
REL_TOL, ABS_TOL = 1e-6, 1e-9


def train_args(data: str, out: str) -> list[str]:
    return ["--config", CONFIG, "--data", data, "--out", out, "--max_steps", str(MAX_STEPS), "--seed", str(SEED),
            "--overrides", ",".join(OVERRIDES), "-j", "2x1", "--rdzv_port", str(free_port()), *THREADS]


def evaluate_args(checkpoint: str, data: str, out: str) -> list[str]:
    return ["--config", CONFIG, "--checkpoint", checkpoint, "--data", data, "--out", out, "-j", "1x1", *THREADS]


DOCKER = ["--image", "mtrec:cpu", "--memMB", "4096"]  # memMB is also /dev/shm (DataLoader workers)
# -----------------------------------------------------------------------------------------------------


def numeric_leaves(tree, prefix: str = "") -> dict[str, float]:
    """{'a/b/c': value} for every int/float leaf of a JSON tree."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in numeric_leaves(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def assert_close(name: str, docker: dict, local: dict) -> None:
    a, b = numeric_leaves(docker), numeric_leaves(local)
    assert a, f"{name}: no metrics found"
    assert a.keys() == b.keys(), f"{name}: different metrics {sorted(a.keys() ^ b.keys())}"
    off = {k: (a[k], b[k]) for k in a if not math.isclose(a[k], b[k], rel_tol=REL_TOL, abs_tol=ABS_TOL)}
    assert not off, f"{name}: local_docker vs local_cwd differ: {off}"


def read_json(path: Path) -> dict:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def test_local_docker_2x1_train_and_evaluate_match_local_cwd(mtrec_image, census_dir, torchxconfig, tmp_path):
    data = container_readable_tree(census_dir)
    runs = container_writable_dir(tmp_path / "runs")
    mounts = mounts_arg(bind_mount(data, "/data", readonly=True), bind_mount(runs, "/runs"))

    torchx_run("local_docker", TRAIN, [*DOCKER, *mounts, *train_args("/data", "/runs/docker")], torchxconfig)
    torchx_run("local_docker", EVALUATE,
               [*DOCKER, *mounts, *evaluate_args("/runs/docker", "/data/test", "/runs/docker_report")], torchxconfig)

    local = tmp_path / "local"
    log_dir = f"log_dir={tmp_path / 'torchx_logs'}"
    torchx_run("local_cwd", TRAIN, train_args(str(data), str(local / "run")), torchxconfig, scheduler_cfg=log_dir)
    torchx_run("local_cwd", EVALUATE, evaluate_args(str(local / "run"), str(data / "test"), str(local / "report")),
               torchxconfig, scheduler_cfg=log_dir)

    # The containers wrote the checkpoints and the report into the host directory, as their user.
    markers = list((runs / "docker").rglob("COMPLETE"))
    assert markers, f"no complete checkpoint under {runs / 'docker'}"
    if os.geteuid() == 0:
        assert markers[0].stat().st_uid == CONTAINER_UID
    docker_summary, local_summary = read_json(runs / "docker" / "summary.json"), read_json(local / "run" / "summary.json")
    for summary in (docker_summary, local_summary):
        assert summary["steps"] == MAX_STEPS and summary["world_size"] == 2
    assert_close("validation", docker_summary["validation"]["tasks"], local_summary["validation"]["tasks"])
    assert_close("evaluation report", read_json(runs / "docker_report" / "report.json")["tasks"],
                 read_json(local / "report" / "report.json")["tasks"])
