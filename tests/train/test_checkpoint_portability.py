"""Checkpoints that travel: scored, resumed and fine-tuned on any world size and sharding plan.

The matrix trains the shipped census config (its table-wise sharding) and column-wise and
data-parallel variants on 1 and 2 processes, scores every checkpoint on 1 and 2 processes and under
another plan, and compares the predictions row by row (by row_id) with scoring under the training
world size and plan. Real torchrun processes, real DCP files, the real census split.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_job_config
from pipeline.data.schema import DatasetSchema
from pipeline.runtime.checkpoint import complete_checkpoints
from pipeline.train.data_position import StreamSettings, consumed_keys, train_stream
from tests.conftest import REPO, mtrec

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs" / "census_adatt.yaml")  # the shipped config; each test names its plan
SMALL = ["train.max_steps=20", "train.validate_every_steps=10", "train.validation_max_batches=2",
         "train.checkpoint_every_steps=10", "train.keep_last_checkpoints=5", "train.log_every_steps=10"]
PLANS = {"table_wise": ["sharding.default.sharding_types=[table_wise]"],
         "column_wise": ["sharding.default.sharding_types=[column_wise]"],
         "data_parallel": ["sharding.default.sharding_types=[data_parallel]"]}
TRAINED = [(1, "table_wise"), (2, "table_wise"), (1, "column_wise"), (2, "column_wise"), (2, "data_parallel")]
# How each checkpoint is scored besides its training world size and plan: (world size, plan).
SCORED = {
    (1, "table_wise"): [(2, "table_wise"), (2, "column_wise")],
    (2, "table_wise"): [(1, "table_wise"), (2, "column_wise")],
    (1, "column_wise"): [(2, "column_wise"), (1, "table_wise")],
    (2, "column_wise"): [(1, "column_wise")],
    (2, "data_parallel"): [(1, "table_wise")],
}

@pytest.fixture(scope="module")
def trained(census_dir, tmp_path_factory) -> dict[tuple[int, str], Path]:
    root = tmp_path_factory.mktemp("portability")
    runs = {}
    for nproc, plan in TRAINED:
        run = root / f"train_{nproc}_{plan}"
        mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run), *SMALL, *PLANS[plan],
              nproc=nproc)
        runs[nproc, plan] = run
    return runs


def _score(run: Path, census_dir: Path, out: Path, nproc: int, plan: str, *extra: str) -> dict[int, np.ndarray]:
    """Predictions by row_id of scoring `run` on `nproc` processes under `plan` (no --config)."""
    mtrec("evaluate", "--checkpoint", str(run), "--which", "latest", "--data", str(census_dir / "test"),
          "--out", str(out), "--write-predictions", *PLANS[plan], *extra, nproc=nproc)
    table = pq.read_table(out / "predictions")  # the manifest (_manifest.json) is not taken for data
    order = np.argsort(table["row_id"].to_numpy())
    preds = np.stack([table[c].to_numpy()[order] for c in table.column_names if c.endswith("_pred")], axis=1)
    return {"row_id": table["row_id"].to_numpy()[order], "pred": preds}


@pytest.mark.parametrize("nproc,plan", TRAINED, ids=[f"trained{n}-{p}" for n, p in TRAINED])
def test_predictions_match_row_by_row_on_any_world_size_and_plan(trained, census_dir, tmp_path, nproc, plan):
    run = trained[nproc, plan]
    reference = _score(run, census_dir, tmp_path / "reference", nproc, plan)
    assert reference["row_id"].size == 49_881 and np.unique(reference["row_id"]).size == 49_881
    for world, scoring_plan in SCORED[nproc, plan]:
        scored = _score(run, census_dir, tmp_path / f"{world}_{scoring_plan}", world, scoring_plan)
        np.testing.assert_array_equal(scored["row_id"], reference["row_id"])
        worst = float(np.abs(scored["pred"] - reference["pred"]).max())
        assert worst <= 1e-6, f"scored on {world} rank(s) under {scoring_plan}: max |dp| = {worst}"


def test_training_improves_on_what_it_scores(trained, census_dir, tmp_path):
    """Guards the matrix against a degenerate model (equal predictions everywhere would also match)."""
    out = tmp_path / "r"
    mtrec("evaluate", "--checkpoint", str(trained[2, "table_wise"]), "--data", str(census_dir / "test"),
          "--out", str(out), nproc=1)
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["never_married"]["auc"] > 0.9, report["tasks"]


def test_best_checkpoint_is_kept_and_scored_by_default(trained, census_dir, tmp_path):
    run = trained[2, "table_wise"]
    summary = json.loads((run / "summary.json").read_text())
    best_meta = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
    watched = load_job_config(CONFIG).train.watched
    assert best_meta["step"] == summary["best_step"] and best_meta["watched"]["task"] == watched.task
    proc = mtrec("evaluate", "--checkpoint", str(run), "--data", str(census_dir / "test"), "--out",
                 str(tmp_path / "best"))
    report = json.loads((tmp_path / "best" / "report.json").read_text())
    assert report["best"] and report["step"] == summary["best_step"]
    assert report["validation_metric"]["value"] == pytest.approx(best_meta["watched"]["value"])
    assert f"step {summary['best_step']}, best validation {watched.task} {watched.metric}" in proc.stdout
    mtrec("evaluate", "--checkpoint", str(run / "checkpoints" / "latest"), "--data", str(census_dir / "test"),
          "--out", str(tmp_path / "latest"))
    assert json.loads((tmp_path / "latest" / "report.json").read_text())["step"] == 20


def test_a_config_whose_model_differs_is_refused_by_key(trained, census_dir, tmp_path):
    proc = mtrec("evaluate", "--checkpoint", str(trained[1, "table_wise"]), "--config", CONFIG,
                 "model.tower_mlp=[8]", "--data", str(census_dir / "test"), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "model.tower_mlp" in proc.stderr, proc.stderr
    assert not (tmp_path / "r" / "report.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "extra_shard"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(trained, census_dir, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(trained[2, "table_wise"], run)
    latest = complete_checkpoints(run)[-1]
    shard = latest / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(data[: len(data) - 64])  # the tail holds optimizer state a model-only load skips
    elif damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shutil.copy(shard, latest / "__2_0.distcp")
    proc = mtrec("evaluate", "--checkpoint", str(latest), "--data", str(census_dir / "test"),
                 "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2, proc.stderr
    named = "__2_0.distcp" if damage == "extra_shard" else "__1_0.distcp"
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "r" / "report.json").exists()


def test_stale_predictions_are_replaced_and_metrics_reads_the_manifest(trained, census_dir, tmp_path):
    out = tmp_path / "eval"
    run = trained[2, "table_wise"]
    for nproc in (2, 1):  # 2 files, then 1: the first run's part-00001 must not survive
        mtrec("evaluate", "--checkpoint", str(run), "--data", str(census_dir / "test"), "--out", str(out),
              "--write-predictions", nproc=nproc)
    files = sorted(p.name for p in (out / "predictions").iterdir())
    assert files == ["_manifest.json", "part-00000.parquet"]
    manifest = json.loads((out / "predictions" / "_manifest.json").read_text())
    assert manifest["world_size"] == 1 and manifest["rows"] == 49_881 and manifest["trained_world_size"] == 2
    mtrec("metrics", "--predictions", str(out / "predictions"), "--tasks", "income,never_married,education",
          "--out", str(tmp_path / "m"), "--no-plots")
    assert json.loads((tmp_path / "m" / "report.json").read_text())["rows"] == 49_881


def _probe(run: Path, config_args: list[str], nproc: int) -> dict:
    """Restore RUN's latest checkpoint in a fresh trainer and compare every tensor with the file."""
    script = str(Path(__file__).with_name("checkpoint_probe.py"))
    if nproc == 1:
        cmd = [sys.executable, script]
    else:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", script]
    proc = subprocess.run([*cmd, str(run), *config_args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("saved,resumed", [(2, 1), (1, 2)])
def test_elastic_resume_restores_every_tensor_and_finishes(census_dir, tmp_path, saved, resumed):
    run = tmp_path / "run"
    common = ["--config", CONFIG, "--data", str(census_dir), "--out", str(run), *SMALL[1:], *PLANS["table_wise"]]
    mtrec("train", *common, "--max-steps", "10", nproc=saved)
    probe = _probe(run, [str(run / "config.yaml"), str(census_dir)], resumed)  # the plan it was trained with
    assert probe["checked"] > 40 and probe["max_abs_diff"] == 0.0, probe
    assert probe["optimizer_tensors"] > 0, probe  # row-wise Adagrad accumulators and Adam moments
    mtrec("train", *common, "--max-steps", "25", nproc=resumed)
    resume = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "resume"][-1]
    assert resume["step"] == 10 and resume["saved_world_size"] == saved and resume["world_size"] == resumed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 25 and summary["world_size"] == resumed


def test_resume_across_incompatible_optimizer_layouts_is_refused(census_dir, tmp_path):
    run = tmp_path / "run"
    common = ["--config", CONFIG, "--data", str(census_dir), "--out", str(run), *SMALL[1:]]
    mtrec("train", *common, "--max-steps", "10", *PLANS["table_wise"], nproc=2)
    proc = mtrec("train", *common, "--max-steps", "20", *PLANS["data_parallel"], check=False)
    assert proc.returncode == 2 and "optim state does not match" in proc.stderr, proc.stderr
    assert "2 rank(s)" in proc.stderr and "1 rank(s)" in proc.stderr and "--init-from" in proc.stderr
    fine_tune = tmp_path / "fine_tune"  # what the refusal suggests works: weights only, fresh optimizer
    mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(fine_tune), *SMALL[1:],
          "--max-steps", "10", "--init-from", str(run), *PLANS["data_parallel"])
    events = [json.loads(line) for line in (fine_tune / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e["kind"] == "init_from"][0]["step"] == 10


def test_an_unknown_watched_task_is_refused_before_training(census_dir, tmp_path):
    proc = mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(tmp_path / "r"),
                 "train.early_stopping.task=nosuch", check=False)
    assert proc.returncode == 2 and "train.early_stopping.task" in proc.stderr and "'nosuch'" in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_elastic_data_position_trains_each_row_at_most_once(census_dir):
    """2 ranks consume k batches each, then 1 rank reads the rest of the epoch: disjoint, and together
    every row of the epoch; a second world-size change within the epoch keeps that true."""
    schema = DatasetSchema.load(census_dir)
    all_rows = sum(pq.read_metadata(p).num_rows for p in schema.split_paths("train"))
    two = StreamSettings(world_size=2, num_workers=1, batch_size=512, shuffle_buffer_rows=8192)
    first = [{**two.to_dict(), "batches": 30}]
    done = consumed_keys(schema, first, seed=3, epoch=1, read_ahead=2)
    assert done.size == 2 * 30 * 512
    one = StreamSettings(world_size=1, num_workers=0, batch_size=1000, shuffle_buffer_rows=8192)
    rest_stream = train_stream(schema, one, 0, seed=3, epoch=1, read_ahead=2, exclude_keys=done)
    rest = np.concatenate([b.keys.numpy() for b in rest_stream])
    assert np.intersect1d(rest, done).size == 0 and rest.size + done.size == all_rows
    assert rest_stream.num_batches() == -(-rest.size // 1000)
    second = [*first, {**one.to_dict(), "batches": 7}]
    done2 = consumed_keys(schema, second, seed=3, epoch=1, read_ahead=2)
    np.testing.assert_array_equal(np.intersect1d(done2, rest), np.sort(rest[:7000]))
