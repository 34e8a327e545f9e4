"""A mutual-learning checkpoint scored with each served head: the head is a serving choice that
`mtrec evaluate` may change (the rest of the model may not), and the `mean` head's predictions are
the mean of the local and global heads' probabilities, row by row."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, mtrec

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs" / "census_adatt_dml.yaml")


def _predictions(out) -> np.ndarray:
    table = pq.read_table(out / "predictions")
    order = np.argsort(table["row_id"].to_numpy())
    return np.stack([table[c].to_numpy()[order] for c in table.column_names if c.endswith("_pred")], axis=1)


def test_each_served_head_scores_the_same_checkpoint(census_dir, tmp_path):
    run = tmp_path / "run"
    mtrec("train", "--config", CONFIG, "--data", str(census_dir), "--out", str(run), "train.max_steps=30",
          "train.validate_every_steps=30", "train.validation_max_batches=1", "train.checkpoint_every_steps=30")
    scored = {}
    for head in ("global", "local", "mean"):
        out = tmp_path / head
        proc = mtrec("evaluate", "--checkpoint", str(run), "--data", str(census_dir / "valid"), "--out", str(out),
                     "--write-predictions", f"model.dml.gkd.serve_head={head}")
        assert ("trained serving global" in proc.stderr) == (head != "global"), proc.stderr
        assert json.loads((out / "report.json").read_text())["step"] == 30
        scored[head] = _predictions(out)
    assert np.abs(scored["local"] - scored["global"]).max() > 1e-3  # two different heads were scored
    np.testing.assert_allclose(scored["mean"], (scored["local"] + scored["global"]) / 2, atol=1e-6)
    refused = mtrec("evaluate", "--checkpoint", str(run), "--data", str(census_dir / "valid"), "--out",
                    str(tmp_path / "refused"), "model.dml.gkd.tau=2", check=False)
    assert refused.returncode == 2 and "model.dml.gkd.tau" in refused.stderr, refused.stderr
