"""Fixtures shared by every test package: the prepared census dataset, subprocess runners and the
repository's file list."""
from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def repo_files() -> tuple[Path, ...]:
    """Tracked files plus untracked ones git does not ignore (new files count before the commit)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode()
    return tuple(REPO / name for name in sorted(set(out.split("\0"))) if name and (REPO / name).is_file())


VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def census_dir(tmp_path_factory) -> Path:
    """`mtrec prepare census` once per test session (about 10 s)."""
    from pipeline.data.census import prepare_census

    out = tmp_path_factory.mktemp("census") / "census"
    prepare_census(out=str(out), raw_dir=None, edu_def="associates_plus", seed=0)
    return out


def job_env() -> dict[str, str]:
    """Environment for child jobs: the venv's torchrun/torchx first on PATH, one thread per rank."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(args: list[str], *, timeout: float = 600, check: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command from the repo root; on failure the assertion shows the tail of its output."""
    proc = subprocess.run(args, cwd=cwd, env=job_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def mtrec(*args: str, nproc: int = 1, **kwargs) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` as a plain process (nproc=1) or under torchrun."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "pipeline", *args]
    else:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "pipeline", *args]
    return run_command(cmd, **kwargs)
