"""`mtrec train` / `mtrec evaluate` end to end on the census data, as real processes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.runtime.checkpoint import CheckpointError, complete_checkpoints, resolve_checkpoint
from tests.conftest import mtrec

CONFIG = str(Path(__file__).with_name("small_adatt.yaml"))
pytestmark = pytest.mark.slow


def _events(run: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["kind"] == kind]


@pytest.fixture(scope="module")
def trained_2ranks(census_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run), nproc=2)
    return run


def test_single_process_run_learns_and_writes_its_files(census_dir, tmp_path):
    run = tmp_path / "run"
    proc = mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run),
                 "--max-steps", "60", "train.log_every_steps=5")
    losses = [e["loss"] for e in _events(run, "train")]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0], losses
    for name in ("config.yaml", "plan.txt", "schema.yaml", "summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in complete_checkpoints(run)][-1] == "step_00000060"
    assert "validation: income auc" in proc.stdout  # the CLI prints a one-line validation summary


def test_finished_run_continues_with_a_larger_budget(census_dir, trained_2ranks, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_2ranks, run)
    mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run), "--max-steps", "50", nproc=2)
    assert _events(run, "resume")[-1]["step"] == 40
    assert json.loads((run / "summary.json").read_text())["steps"] == 50


def test_resuming_under_another_training_config_is_refused_unless_accepted(census_dir, trained_2ranks, tmp_path):
    """The same --out with another learning rate would mix two trainings in one run: exit 2 naming the
    key and the ways out, before anything is built; RUN/config.yaml keeps the trained config."""
    run = tmp_path / "run"
    shutil.copytree(trained_2ranks, run)
    before = (run / "config.yaml").read_text()
    args = ("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run), "--max-steps", "45",
            "train.dense_optimizer.lr=0.01", "data.num_workers=0")
    proc = mtrec(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "train.dense_optimizer.lr: 0.001 -> 0.01" in proc.stderr and "--init-from" in proc.stderr
    assert "max_steps" not in proc.stderr and "num_workers" not in proc.stderr  # budgets and workers may change
    assert (run / "config.yaml").read_text() == before and not _events(run, "resume")
    proc = mtrec(*args, "--accept-config-changes")
    assert "under a changed config" in proc.stderr and _events(run, "resume")[-1]["step"] == 40
    assert "lr: 0.01" in (run / "config.yaml").read_text()


@pytest.fixture(scope="module")
def census_min_max(tmp_path_factory) -> Path:
    """Census with the min-max features: the same name, columns, shapes and rows as census_dir."""
    out = tmp_path_factory.mktemp("census_min_max") / "data"
    mtrec("prepare", "census", "--preprocess", "mtrec", "--out", str(out))
    return out


def test_scoring_a_differently_encoded_dataset_is_refused_unless_asked(trained_2ranks, census_min_max, tmp_path):
    """min-max census features given to a model trained on log1p + z-score ones: same columns and
    shapes, other meanings; refused naming the dataset and the way out (exit 2)."""
    args = ("evaluate", "--checkpoint", str(trained_2ranks), "--data", str(census_min_max / "test"),
            "--out", str(tmp_path / "r"))
    proc = mtrec(*args, check=False)
    assert proc.returncode == 2 and "is encoded differently from the data the model was trained on" in proc.stderr
    assert "--different-encoding" in proc.stderr and not (tmp_path / "r" / "report.json").exists()
    proc = mtrec(*args, "--different-encoding")
    assert "scoring it anyway (--different-encoding)" in proc.stderr and (tmp_path / "r" / "report.json").is_file()


def test_resuming_on_a_re_prepared_dataset_of_the_same_rows_is_refused(trained_2ranks, census_min_max, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_2ranks, run)
    before = {name: (run / name).read_text() for name in ("config.yaml", "schema.yaml")}
    proc = mtrec("train", "--config", CONFIG, "--data", str(census_min_max), "--out", str(run), "--max-steps", "45",
                 check=False)
    assert proc.returncode == 2 and "written for a different dataset" in proc.stderr and "another encoding" in proc.stderr
    assert {name: (run / name).read_text() for name in before} == before  # refused before anything is written


def test_scoring_a_whole_dataset_directory_asks_for_a_split(census_dir, trained_2ranks, tmp_path):
    """--data DATASET (not DATASET/test) would score train, valid and test as one log."""
    proc = mtrec("evaluate", "--checkpoint", str(trained_2ranks), "--data", str(census_dir), "--out",
                 str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and f"--data {census_dir} is a whole dataset" in proc.stderr
    assert f"--data {census_dir / 'test'}" in proc.stderr


def test_plan_is_saved_next_to_every_checkpoint(trained_2ranks):
    plan = (trained_2ranks / "plan.txt").read_text()
    assert "sparse_arch.ebc.t_" in plan
    for ckpt in complete_checkpoints(trained_2ranks):
        assert plan.startswith((ckpt / "plan.txt").read_text())  # the table lines; the run's adds the budget summary
        assert json.loads((ckpt / "meta.json").read_text())["world_size"] == 2


def test_evaluate_is_identical_for_1_and_2_ranks_and_matches_mtrec_metrics(census_dir, trained_2ranks, tmp_path):
    reports = {}
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        mtrec("evaluate", "--config", CONFIG, "--checkpoint", str(trained_2ranks), "--data",
              str(census_dir / "test"), "--out", str(out), "--write-predictions", nproc=nproc)
        reports[nproc] = json.loads((out / "report.json").read_text())
    assert reports[1]["rows"] == reports[2]["rows"] == 49_881
    for task, m1 in reports[1]["tasks"].items():
        m2 = reports[2]["tasks"][task]
        for key in ("auc", "ne", "logloss", "calibration", "auc_error_bound"):
            assert m2[key] == pytest.approx(m1[key], rel=0, abs=1e-12), (task, key)
    # the written predictions carry every test row once, and `mtrec metrics` over them agrees
    metrics_out = tmp_path / "metrics"
    mtrec("metrics", "--predictions", str(tmp_path / "eval2" / "predictions" / "*.parquet"),
          "--tasks", ",".join(reports[1]["tasks"]), "--out", str(metrics_out), "--no-plots")
    from_logs = json.loads((metrics_out / "report.json").read_text())
    assert from_logs["rows"] == 49_881
    for task, m in reports[2]["tasks"].items():
        assert from_logs["tasks"][task]["auc"] == pytest.approx(m["auc"], abs=1e-12)
        assert from_logs["tasks"][task]["ne"] == pytest.approx(m["ne"], abs=1e-9)


def test_incomplete_checkpoints_are_never_picked_up(trained_2ranks, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_2ranks, run)
    latest = complete_checkpoints(run)[-1]
    half = latest.with_name("step_00000099.tmp")  # a crashed write
    shutil.copytree(latest, half)
    assert resolve_checkpoint(run) == latest
    (latest / "COMPLETE").unlink()
    assert resolve_checkpoint(run) != latest
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_checkpoint(latest)


@pytest.mark.parametrize("damage", ["truncate_data", "foreign_meta"])
def test_corrupt_or_foreign_checkpoint_gets_a_clear_error(census_dir, trained_2ranks, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(trained_2ranks, run)
    latest = complete_checkpoints(run)[-1]
    if damage == "truncate_data":
        for f in latest.glob("*.distcp"):
            f.write_bytes(f.read_bytes()[:100])
        expected = "__0_0.distcp: 100 bytes, meta.json records"
    else:
        (latest / "meta.json").write_text(json.dumps({"format": "someone-else/3"}))
        expected = "not an mtrec checkpoint"
    proc = mtrec("evaluate", "--checkpoint", str(latest), "--data", str(census_dir / "test"),
                 "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr and str(latest) in proc.stderr
    assert not (tmp_path / "r" / "report.json").exists()
