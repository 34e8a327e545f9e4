"""The built image: runs as the non-root user with no ENTRYPOINT, and a 2-container TorchX
local_docker job (2x1) rendezvouses over TorchX's docker network and shards an EBC table-wise."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO
from tests.docker.torchx_jobs import bind_mount, free_port, mounts_arg, torchx_run

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_image_runs_as_non_root_without_entrypoint(mtrec_image):
    config = json.loads(subprocess.run(["docker", "image", "inspect", mtrec_image], capture_output=True,
                                       text=True, check=True).stdout)[0]["Config"]
    assert config["User"] == "mtrec"
    assert not config["Entrypoint"], "an ENTRYPOINT would hide the torchrun command TorchX supplies"
    assert config["WorkingDir"] == "/opt/mtrec"
    out = subprocess.run(["docker", "run", "--rm", mtrec_image, "sh", "-c", "id -u; ls configs data"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "1000"
    assert "census-income-kdd" in out


def test_torchx_local_docker_2x1_dmp(mtrec_image, torchxconfig):
    smoke = bind_mount(REPO / "tests" / "docker", "/smoke", readonly=True)
    proc = torchx_run("local_docker", "dist.ddp", [
        "--image", mtrec_image, "-j", "2x1", "--memMB", "2048", "--rdzv_port", str(free_port()),
        *mounts_arg(smoke), "--script", "/smoke/dmp_smoke.py"], torchxconfig, timeout=600)
    assert "dmp smoke ok: world=2 owners={'t0': [0], 't1': [1]}" in proc.stderr
