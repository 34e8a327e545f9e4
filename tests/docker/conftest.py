"""Fixtures of the Docker tests: a running engine and the built image, once per session.

Where no engine can be started these tests FAIL with the reason; set MTREC_SKIP_DOCKER=1 to skip
them on purpose (docs/DOCKER.md).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, job_env
from tests.docker.torchx_jobs import IMAGE

SKIP_ENV = "MTREC_SKIP_DOCKER"
# Cold build (engine install, base bootstrap, wheelhouse, image) takes ~6 min on 2 cores; cached ~1 min.
BUILD_TIMEOUT_S = 1800
CONTAINER_UID = 1000  # ARG UID of docker/Dockerfile, as built by scripts/docker_build.sh


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine that answers (scripts/docker_engine.sh may install and start dockerd)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the Docker tests are skipped on request")
    proc = subprocess.run([str(REPO / "scripts" / "docker_engine.sh")], capture_output=True, text=True,
                          timeout=600, env=job_env())
    if proc.returncode != 0:
        pytest.fail(f"no Docker engine could be used or started (set {SKIP_ENV}=1 to skip the Docker tests "
                    f"on purpose):\n{proc.stderr[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def mtrec_image(docker_engine) -> str:
    """The mtrec:cpu image built by scripts/docker_build.sh (layer-cached when nothing changed)."""
    proc = subprocess.run([str(REPO / "scripts" / "docker_build.sh"), "--tag", IMAGE], cwd=REPO,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=job_env())
    if proc.returncode != 0:
        pytest.fail(f"scripts/docker_build.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)
    return IMAGE


@pytest.fixture
def torchxconfig(tmp_path: Path) -> Path:
    """An empty TorchX config: the test's command line alone decides what runs."""
    path = tmp_path / "torchxconfig"
    path.write_text("# empty on purpose: see tests/docker/torchx_jobs.py\n")
    return path


def container_writable_dir(path: Path) -> Path:
    """Create `path` for a bind mount the image's non-root user writes into (owned by its UID)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
    else:  # a non-root Docker user cannot chown; let anyone write instead
        path.chmod(0o777)
    return path


def container_readable_tree(path: Path) -> Path:
    """Make a host tree readable by any UID (pytest's temp dirs are 0700) for a read-only mount."""
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))
    return path
