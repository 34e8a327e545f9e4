"""`mtrec diagnose`: gate weights averaged over a split, per-task matrices and heatmaps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.adatt import AdaTTGeneral
from models.ple import PLE
from pipeline.eval.diagnose import SHARED, expert_modules, module_blocks
from tests.conftest import mtrec

CONFIG = Path(__file__).resolve().parents[1] / "train" / "small_adatt.yaml"


def test_module_blocks_sums_each_modules_experts():
    gates = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(module_blocks(gates, [1, 2, 1]), [[0.1, 0.5, 0.4], [0.25, 0.5, 0.25]])


def test_expert_modules_of_ple_and_adatt_general():
    tasks = ["a", "b"]
    ple = PLE(8, [[4], [4]], task_experts=[1, 2], num_shared_experts=3)
    assert expert_modules(ple, tasks) == (["a", "b", SHARED], [1, 2, 3])
    adatt = AdaTTGeneral(8, [[4]], task_experts=[2, 2], num_shared_experts=1)
    assert expert_modules(adatt, tasks) == (["a", "b", SHARED], [2, 2, 1])


@pytest.mark.slow
def test_diagnose_adatt_writes_row_stochastic_task_matrices(census_dir, tmp_path):
    run = tmp_path / "run"
    mtrec("train", "--config", str(CONFIG), "--data", str(census_dir), "--out", str(run), "--max-steps", "5")
    out = tmp_path / "diag"
    mtrec("diagnose", "--config", str(CONFIG), "--checkpoint", str(run), "--data", str(census_dir / "valid"),
          "--out", str(out), "--max-batches", "2")
    report = json.loads((out / "gates.json").read_text())
    tasks = report["tasks"]
    assert report["backbone"] == "adatt_sp" and len(report["levels"]) == 2 and report["rows"] > 0
    for level, entry in enumerate(report["levels"], start=1):
        matrix = np.asarray(entry["task_matrix"])
        assert matrix.shape == (len(tasks), len(tasks))
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
        assert (matrix >= 0).all()
        # The native residual sits on each task's own block only (AdaTT eq 11).
        off_diagonal = ~np.eye(len(tasks), dtype=bool)
        np.testing.assert_allclose(np.asarray(entry["fusion"])[off_diagonal], matrix[off_diagonal], atol=1e-12)
        assert (out / f"gates_level{level}.png").stat().st_size > 0
