"""`mtrec metrics` on one process imports neither torch nor matplotlib, unless it writes plots."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO
from tests.eval.synthetic_logs import write_log

# Runs the command through the CLI entry point in a fresh interpreter, then lists what it imported.
_PROGRAM = """
import json, sys
from pipeline.cli import main
main(["metrics", "--predictions", sys.argv[1], "--tasks", "a,b", "--out", sys.argv[2], *sys.argv[3:]])
print(json.dumps(sorted(m for m in ("torch", "torch.distributed", "matplotlib") if m in sys.modules)))
"""


def _imported_by_metrics(predictions: str, out: str, *options: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, predictions, out, *options], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_process_metrics_imports_no_torch_and_matplotlib_only_for_plots(tmp_path):
    write_log(tmp_path / "log.parquet", np.random.default_rng(0), 2000)
    assert _imported_by_metrics(str(tmp_path / "log.parquet"), str(tmp_path / "bare"), "--no-plots") == []
    report = json.loads((tmp_path / "bare" / "report.json").read_text())
    assert report["rows"] > 0 and "plots" not in report
    # The same check sees matplotlib once plots are written (and still no torch).
    assert _imported_by_metrics(str(tmp_path / "log.parquet"), str(tmp_path / "plots")) == ["matplotlib"]
    assert (tmp_path / "plots" / "plots" / "a_roc.png").is_file()
