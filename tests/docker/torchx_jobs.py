"""Run TorchX jobs from the repo root for the Docker tests, and clean up their containers."""
from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Optional

from tests.conftest import REPO, VENV_BIN, job_env

IMAGE = "mtrec:cpu"
# [project] local_docker containers are not removed by TorchX 0.7.0; this label finds ours.
APP_ID_LABEL = "torchx.pytorch.org/app-id"
HANDLE_RE = re.compile(r"^local_docker://[^/]*/(?P<app_id>\S+)$", re.MULTILINE)


def free_port() -> int:
    """A TCP port nobody listens on right now (rendezvous port of a job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bind_mount(src: Path, dst: str, readonly: bool = False) -> list[str]:
    """TorchX `--mounts` items for one bind mount (several mounts concatenate into one list)."""
    return [f"type=bind,src={src.resolve()},dst={dst}" + (",readonly" if readonly else "")]


def mounts_arg(*mounts: list[str]) -> list[str]:
    """`--mounts a,b,...`: TorchX parses one comma-separated list holding every mount."""
    return ["--mounts", ",".join(item for mount in mounts for item in mount)]


def torchx_run(scheduler: str, component: str, args: list[str], torchxconfig: Path, *,
               scheduler_cfg: Optional[str] = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`torchx run -s SCHEDULER COMPONENT ARGS` from the repo root; waits for the job (local schedulers).

    TORCHXCONFIG points at `torchxconfig` so the repo's .torchxconfig (defaults meant for people)
    cannot change what the test runs. For local_docker, `--workspace ""` runs the image as built
    (no overlay image; docs/STACK.md §4.4), and the job's containers are removed afterwards.
    Raises AssertionError with the output tail when the job fails.
    """
    cmd = [str(VENV_BIN / "torchx"), "run", "-s", scheduler]
    if scheduler == "local_docker":
        cmd += ["--workspace", ""]
    if scheduler_cfg:
        cmd += ["-cfg", scheduler_cfg]
    cmd += [component, *args]
    env = {**job_env(), "TORCHXCONFIG": str(torchxconfig)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if scheduler == "local_docker":
        for match in HANDLE_RE.finditer(proc.stdout):
            remove_containers(match["app_id"])
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def remove_containers(app_id: str) -> None:
    """Remove the (exited) containers of one TorchX local_docker app."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={APP_ID_LABEL}={app_id}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
