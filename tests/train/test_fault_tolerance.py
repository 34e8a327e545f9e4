"""Kill one rank with SIGKILL in the middle of a 2-process run; the resumed run must finish with
exactly the validation metrics of an uninterrupted run with the same seed.

Why exact: the model, both optimisers' states and the RNG are restored from the checkpoint, and
the data stream is a deterministic function of (seed, epoch, rank, world size, workers), so the
resumed run sees the same batches in the same order and performs the same float operations.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, job_env

CONFIG = str(Path(__file__).with_name("small_adatt.yaml"))
pytestmark = pytest.mark.slow


def _torchrun(census_dir: Path, out: Path, max_restarts: int) -> subprocess.Popen:
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", f"--max-restarts={max_restarts}",
           "-m", "pipeline", "train", "--config", CONFIG, "--data", str(census_dir), "--out", str(out)]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=log, stderr=subprocess.STDOUT)


def _workers(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(c) for c in children]


def _kill_a_worker_after(proc: subprocess.Popen, checkpoint: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (checkpoint / "COMPLETE").exists():
        assert proc.poll() is None, "the run ended before the checkpoint to kill after"
        assert time.time() < deadline, f"{checkpoint} never appeared"
        time.sleep(0.05)
    workers = _workers(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)


def _validation(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["validation"]


def _events(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def _assert_same_metrics(a: dict, b: dict) -> None:
    for task, ma in a["tasks"].items():
        mb = b["tasks"][task]
        for key in ("auc", "ne", "logloss", "calibration"):
            assert mb[key] == pytest.approx(ma[key], rel=0, abs=1e-12), (task, key)


@pytest.fixture(scope="module")
def uninterrupted(census_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "reference"
    proc = _torchrun(census_dir, out, max_restarts=0)
    assert proc.wait(timeout=300) == 0, (out.parent / "reference.log").read_text()[-4000:]
    return out


def test_torchrun_restarts_a_killed_rank_and_resumes(census_dir, uninterrupted, tmp_path):
    """torchrun --max-restarts=1: recovery without a person."""
    out = tmp_path / "auto"
    proc = _torchrun(census_dir, out, max_restarts=1)
    _kill_a_worker_after(proc, out / "checkpoints" / "step_00000020")
    assert proc.wait(timeout=300) == 0, (tmp_path / "auto.log").read_text()[-4000:]
    resumes = _events(out, "resume")
    assert len(resumes) == 1 and 20 <= resumes[0]["step"] < 40, resumes
    _assert_same_metrics(_validation(uninterrupted), _validation(out))


def test_relaunch_after_a_kill_resumes_from_the_latest_checkpoint(census_dir, uninterrupted, tmp_path):
    """No restarts: the job fails; the same command relaunched continues automatically."""
    out = tmp_path / "manual"
    proc = _torchrun(census_dir, out, max_restarts=0)
    _kill_a_worker_after(proc, out / "checkpoints" / "step_00000010")
    assert proc.wait(timeout=300) != 0
    assert not (out / "summary.json").exists()
    relaunch = _torchrun(census_dir, out, max_restarts=0)
    assert relaunch.wait(timeout=300) == 0, (tmp_path / "manual.log").read_text()[-4000:]
    assert [e["step"] for e in _events(out, "resume")][0] >= 10
    _assert_same_metrics(_validation(uninterrupted), _validation(out))
