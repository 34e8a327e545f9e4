"""Bad specs and bad rows in `mtrec prepare table`: one clear error naming file, line and column (exit
code 2 from the CLI, no traceback), or a documented policy whose count is in the summary."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from models.typed_config import ConfigError
from pipeline.data.schema import DataError, DatasetExistsError, DatasetSchema
from pipeline.data.table.importer import prepare_table
from tests.conftest import REPO, job_env
from tests.data.test_table_importer import HEADER, ROWS, SPEC, write_spec


def spec_with(tmp_path, rows=ROWS, **changes):
    (tmp_path / "log.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return write_spec(tmp_path, {**SPEC, **changes})


def with_cell(row: int, column: str, value: str) -> list[str]:
    rows = [r.split(",") for r in ROWS]
    rows[row][HEADER.split(",").index(column)] = value
    return [",".join(r) for r in rows]


def test_unknown_spec_key_names_the_key_path(tmp_path):
    categorical = [dict(SPEC["categorical"][0], bukets=10)] + SPEC["categorical"][1:]
    with pytest.raises(ConfigError, match=r"spec.yaml: categorical\[0\]: unknown key\(s\) \['bukets'\]"):
        prepare_table(spec_with(tmp_path, categorical=categorical), tmp_path / "out")


def test_unknown_column_names_file_column_and_spec_key(tmp_path):
    dense = [{"name": "prize"}] + SPEC["dense"][1:]
    with pytest.raises(DataError, match=r"log.csv: column\(s\) 'prize' \(dense\[0\]\) named in the spec are not in"):
        prepare_table(spec_with(tmp_path, dense=dense), tmp_path / "out")


@pytest.mark.parametrize("label, message", [
    ({"column": "click", "equals": 1, "at_least": 1}, r"tasks\[0\].label: one operator per rule"),
    ({"column": "click", "one_of": [1, "yes"]}, r"tasks\[0\].label.one_of: mixes numbers and strings"),
    ({"column": "click", "equals": True}, r"tasks\[0\].label.equals: True matches none of"),
])
def test_bad_rule_is_a_config_error(tmp_path, label, message):
    tasks = [dict(SPEC["tasks"][0], label=label), SPEC["tasks"][1]]
    with pytest.raises(ConfigError, match=message):
        prepare_table(spec_with(tmp_path, tasks=tasks), tmp_path / "out")


def test_leaky_feature_is_a_config_error(tmp_path):
    categorical = SPEC["categorical"] + [{"name": "clicked", "column": "click"}]
    with pytest.raises(ConfigError, match="column 'click' of task 'click' is also categorical 'clicked'"):
        prepare_table(spec_with(tmp_path, categorical=categorical), tmp_path / "out")


def test_unparseable_number_names_line_and_column(tmp_path):
    spec = spec_with(tmp_path, rows=with_cell(2, "price", "12,5".replace(",", ";")))
    with pytest.raises(DataError, match=r"log.csv: line 4, column 'price': not a number: '12;5'"):
        prepare_table(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written


def test_unparseable_number_policy_null_is_counted(tmp_path):
    dense = [dict(SPEC["dense"][0], invalid="null"), SPEC["dense"][1]]
    prepare_table(spec_with(tmp_path, rows=with_cell(2, "price", "n/a"), dense=dense), tmp_path / "out")
    summary = DatasetSchema.load(tmp_path / "out").prep["summary"]
    assert summary["unparseable_set_to_null"] == {"price": 1}
    assert summary["nulls_filled"]["price"]["train"] == 2  # the original null and the unparseable one


def test_unparseable_label_is_an_error_or_a_counted_drop(tmp_path):
    rows = with_cell(4, "purchase", "maybe")  # line 6, a clicked row: the buy label is needed
    message = r"log.csv: line 6, column 'purchase': task 'buy': cannot make a label of 'maybe'"
    with pytest.raises(DataError, match=message):
        prepare_table(spec_with(tmp_path, rows=rows), tmp_path / "out")
    text = prepare_table(spec_with(tmp_path, rows=rows, bad_labels="drop"), tmp_path / "out")
    schema = DatasetSchema.load(tmp_path / "out")
    assert "rows with an unparseable label dropped: buy 1" in text
    assert schema.prep["summary"]["rows_read"] == 11 and schema.splits["train"].rows == 6


def test_label_not_needed_where_the_mask_is_zero(tmp_path):
    prepare_table(spec_with(tmp_path, rows=with_cell(1, "purchase", "maybe")), tmp_path / "out")  # click 0 there
    assert DatasetSchema.load(tmp_path / "out").splits["train"].rows == 7


def test_single_class_on_train_is_an_error(tmp_path):
    tasks = [{"name": "click", "label": {"column": "click", "greater_than": 5}}]
    with pytest.raises(DataError, match=r"task 'click' has a single class on train: all 7 labelled rows are 0"):
        prepare_table(spec_with(tmp_path, tasks=tasks), tmp_path / "out")


def test_duplicate_keys_error_or_counted_drop(tmp_path):
    with pytest.raises(DataError, match=r"log.csv: line 4, column 'ts': duplicate key '2024-01-01'"):
        prepare_table(spec_with(tmp_path, rows=with_cell(2, "ts", "2024-01-01"), key="ts"), tmp_path / "out")
    text = prepare_table(spec_with(tmp_path, rows=with_cell(2, "ts", "2024-01-01"), key="ts",
                                   duplicate_keys="drop"), tmp_path / "out")
    assert "rows with a duplicate key dropped: 2" in text  # and the two valid rows of 2024-01-08
    splits = DatasetSchema.load(tmp_path / "out").splits
    assert (splits["train"].rows, splits["valid"].rows) == (6, 1)


def test_rerun_is_up_to_date_and_a_changed_spec_is_refused(tmp_path):
    spec = spec_with(tmp_path)
    prepare_table(spec, tmp_path / "out")
    assert "is up to date" in prepare_table(spec, tmp_path / "out")
    with pytest.raises(DatasetExistsError, match="spec"):
        prepare_table(spec_with(tmp_path, name="other"), tmp_path / "out")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    spec = spec_with(tmp_path, rows=with_cell(2, "price", "abc"))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "prepare", "table", "--spec", str(spec),
                           "--out", str(tmp_path / "out")], cwd=REPO, env=job_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mtrec prepare: error:" in lines[0] and "line 4, column 'price'" in lines[0]


def test_bad_input_override_and_missing_file(tmp_path):
    spec = spec_with(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        prepare_table(spec, tmp_path / "out", inputs=[str(tmp_path / "nope.csv")])
    with pytest.raises(ConfigError, match="every entry as SPLIT=PATH or none"):
        prepare_table(spec, tmp_path / "out", inputs=[f"train={tmp_path / 'log.csv'}", str(tmp_path / "log.csv")])
    (tmp_path / "y.yaml").write_text(yaml.safe_dump({**SPEC, "splits": {"method": "files"}}))
    with pytest.raises(ConfigError, match="splits.method: files needs inputs.files to map splits"):
        prepare_table(tmp_path / "y.yaml", tmp_path / "out")
