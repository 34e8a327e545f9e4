"""Cheap checks of the result benchmarks' shared machinery (no training: the scripts themselves
are exercised by running them, see docs/RESULTS.md)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def runs():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("_runs")
    finally:
        sys.path.remove(str(BENCHMARKS))


def report(auc: float, ne: float | None) -> dict:
    return {"tasks": {"income": {"auc": auc, "ne": ne}}}


def test_aggregate_mean_sample_std_and_skips_nulls(runs):
    agg = runs.aggregate([report(0.90, 0.5), report(0.92, None), report(0.94, 0.7)])
    mean, std, n = agg["income"]["auc"]
    assert (round(mean, 12), round(std, 12), n) == (0.92, 0.02, 3)
    assert agg["income"]["ne"][2] == 2  # the null NE is skipped, not counted as 0


def test_run_spec_directories_and_dml_overrides(runs, tmp_path):
    base = runs.RunSpec("m", Path("c.yaml"), False, 3)
    dml = runs.RunSpec("m", Path("c.yaml"), True, 3, ("a=1",))
    assert base.run_dir(tmp_path) != dml.run_dir(tmp_path)
    assert not set(runs.DML_OVERRIDES) & set(base.all_overrides())
    assert set(runs.DML_OVERRIDES) <= set(dml.all_overrides()) and "a=1" in dml.all_overrides()


def test_best_checkpoint_prefers_the_kept_best_step(runs, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"best_step": 20}))
    assert runs.best_checkpoint(tmp_path) == tmp_path  # not kept: the run's newest checkpoint
    best = tmp_path / "checkpoints" / "step_00000020"
    best.mkdir(parents=True)
    (best / "COMPLETE").write_text("")
    assert runs.best_checkpoint(tmp_path) == best


def test_finished_run_is_not_retrained(runs, tmp_path):
    spec = runs.RunSpec("m", Path("missing.yaml"), False, 0)
    report_dir = spec.run_dir(tmp_path) / "report_test"
    report_dir.mkdir(parents=True)
    (report_dir / "report.json").write_text(json.dumps(report(0.9, 0.5)))
    budget = runs.Budget()
    got = runs.train_and_evaluate(spec, tmp_path / "no-data", tmp_path, budget, splits=("test",))
    assert got["test"]["tasks"]["income"]["auc"] == 0.9 and budget.log == []


@pytest.mark.parametrize("script", ["census_table.py", "correlation_sweep.py"])
def test_scripts_parse_their_arguments(script):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--seeds" in proc.stdout, proc.stderr
