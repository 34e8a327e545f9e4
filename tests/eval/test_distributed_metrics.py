"""1 rank vs 2 ranks (torchrun, gloo): `mtrec metrics` gives the same report to 1e-12.

Two ranks read disjoint row groups (whole files with --user-column), all-reduce every state
(exact-mode score maps by all-gather, segment names by agreement) and rank 0 writes the report.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from models.inputs import Task
from pipeline.eval.metrics_job import MetricsJob, run_metrics
from tests.conftest import mtrec
from tests.eval.synthetic_logs import write_log

pytestmark = pytest.mark.slow


def _assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-12, abs=1e-15), path
    else:
        assert a == b, path


def test_one_and_two_ranks_give_identical_reports(tmp_path):
    rng = np.random.default_rng(0)
    weights = [write_log(tmp_path / "logs" / f"part-{i}.parquet", rng, 1500 + 500 * i, file_index=i,
                         row_group_rows=400)["weight"] for i in range(4)]
    predictions = str(tmp_path / "logs" / "*.parquet")
    run_metrics(MetricsJob(predictions=predictions, tasks=(Task("a"), Task("b")), out=str(tmp_path / "one"),
                           auc_mode="exact", segment_by="country", user_column="user", batch_rows=300, plots=False))
    # -v: every rank logs its share (without it, only rank 0 logs INFO lines)
    two_ranks = mtrec("-v", "metrics", "--predictions", predictions, "--tasks", "a,b", "--auc-mode", "exact",
                      "--segment-by", "country", "--user-column", "user", "--batch-rows", "300", "--no-plots",
                      "--out", str(tmp_path / "two"), nproc=2, timeout=300)
    shares = dict(re.findall(r"this rank \((\d) of 2\) reads \d+ row groups, (\d+) rows", two_ranks.stderr))
    assert sorted(shares) == ["0", "1"] and all(int(rows) > 0 for rows in shares.values())
    assert sum(int(rows) for rows in shares.values()) == sum(len(w) for w in weights)
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert (one["inputs"].pop("world_size"), two["inputs"].pop("world_size")) == (1, 2)
    assert one["rows"] == sum(int((w > 0).sum()) for w in weights)
    _assert_close(one, two)
    assert one["tasks"]["a"]["gauc_users"] > 0 and one["tasks"]["a"]["auc_error_bound"] == 0.0
