"""The worked example of docs/DATA.md "Bring your own data", run as written: UCI Adult from its CSV
files to a per-task test report with no code (prepare table -> init-config -> train -> evaluate).

The commands are taken from the section's ```bash block and run by bash in a scratch directory
that sees the repository's examples/ (so their relative paths and `runs/` outputs work as they do
from the repository root); the step budget is the documented one.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from pipeline.config import load_job_config
from pipeline.eval.report import load_report
from tests.conftest import REPO, job_env

SECTION = "## Bring your own data"


def section_commands() -> list[str]:
    text = (REPO / "docs" / "DATA.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", len(SECTION))] if "\n## " in section[len(SECTION):] else section
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_section_has_the_four_steps():
    commands = section_commands()
    assert [c.split()[:2] for c in commands] == [["mtrec", "prepare"], ["mtrec", "init-config"],
                                                 ["mtrec", "train"], ["mtrec", "evaluate"]]


@pytest.mark.slow
def test_adult_from_csv_to_test_report(tmp_path):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {k: v for k, v in job_env().items() if k != "MTREC_MAX_STEPS"}  # the documented budget
    for command in section_commands():
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        if command.startswith("mtrec prepare"):
            assert "rows: train 29,273, valid 3,288, test 16,281" in proc.stdout
    config = load_job_config(tmp_path / "runs" / "adult.yaml")
    assert config.train.early_stopping.task == "income"
    assert set(config.model.loss.task_weights) == {"income", "never_married"}
    tasks = load_report(tmp_path / "runs" / "adult" / "report")["tasks"]
    assert tasks["income"]["count"] == 16_281
    assert tasks["income"]["auc"] >= 0.88, tasks["income"]
    assert tasks["never_married"]["auc"] >= 0.95, tasks["never_married"]
