"""`mtrec metrics` over Parquet logs: equals the in-memory accumulator, bad inputs, atomic report, compare."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.inputs import Task
from pipeline.cli import main as cli_main
from pipeline.data.schema import DataError
from pipeline.eval import report as report_module
from pipeline.metrics.grouped import GroupedAucMetrics
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.eval.metrics_job import MetricsJob, run_metrics
from pipeline.eval.report import compare_reports
from tests.eval.synthetic_logs import write_log

TASKS = ("a", "b")


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Three log files (3 row groups each) in one directory, and their columns."""
    directory = tmp_path_factory.mktemp("logs")
    rng = np.random.default_rng(0)
    columns = [write_log(directory / f"part-{i}.parquet", rng, 2500, file_index=i) for i in range(3)]
    return directory, columns


def _job(predictions: Path | str, out: Path, **kwargs) -> MetricsJob:
    return MetricsJob(predictions=str(predictions), tasks=tuple(Task(t) for t in TASKS), out=str(out), **kwargs)


def _stacked(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """preds, labels, masks [rows, 2] and weights [rows] of one log's columns."""
    return (*(np.stack([columns[f"{t}_{kind}"] for t in TASKS], 1) for kind in ("pred", "label", "mask")),
            columns["weight"])


def _in_memory(columns: list[dict[str, np.ndarray]], mode: str) -> dict:
    metrics = MultiTaskMetrics([Task(t) for t in TASKS], mode)
    for c in columns:
        metrics.update(*_stacked(c))
    return metrics.compute()


def _approx(value):
    return pytest.approx(value, rel=1e-12, abs=1e-15) if isinstance(value, float) else value


def test_report_equals_in_memory_metrics_and_is_complete(logs, tmp_path):
    directory, columns = logs
    for mode in ("bounded", "exact"):
        out = tmp_path / mode
        report = run_metrics(_job(directory / "*.parquet", out, auc_mode=mode, batch_rows=700))
        expected = _in_memory(columns, mode)
        assert report["rows"] == expected["rows"] == sum(int((c["weight"] > 0).sum()) for c in columns)
        for task in TASKS:
            for key, value in expected["tasks"][task].items():
                assert report["tasks"][task][key] == _approx(value)
        on_disk = json.loads((out / "report.json").read_text())
        assert on_disk["tasks"] == json.loads(json.dumps(report["tasks"]))
        assert on_disk["inputs"]["files"] == 3 and on_disk["inputs"]["row_groups"] == 9
        assert on_disk["inputs"]["mask_columns"] == ["a_mask", "b_mask"]
        for files in on_disk["plots"].values():
            assert set(files) == {"reliability", "roc"}
            assert all((out / f).read_bytes().startswith(b"\x89PNG") for f in files.values())
        table = (out / "report.md").read_text()
        assert "| task | rows | positive rate | mean pred | calibration | logloss | NE | AUC ± bound |" in table


def test_file_order_does_not_change_the_report(logs, tmp_path):
    directory, _ = logs
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    for i, name in enumerate(["z.parquet", "m.parquet", "a.parquet"]):  # reverses the sorted order
        shutil.copy(directory / f"part-{i}.parquet", reordered / name)
    a = run_metrics(_job(directory, tmp_path / "a", plots=False))
    b = run_metrics(_job(reordered, tmp_path / "b", plots=False, batch_rows=333))
    for task in TASKS:
        for key, value in a["tasks"][task].items():
            assert b["tasks"][task][key] == _approx(value)


def test_segments_and_gauc(logs, tmp_path):
    directory, columns = logs
    report = run_metrics(_job(directory, tmp_path / "r", segment_by="country", user_column="user",
                              baseline_rates={"a": 0.3}, plots=False, batch_rows=500))
    assert report["segments"]["column"] == "country"
    assert set(report["segments"]["values"]) == {"de", "fr", "us"}
    assert sum(s["tasks"]["a"]["count"] for s in report["segments"]["values"].values()) == report["tasks"]["a"]["count"]
    gauc = GroupedAucMetrics(list(TASKS))
    for c in columns:
        gauc.update(c["user"], *_stacked(c))
        gauc.flush()
    for task, expected in gauc.compute().items():
        assert report["tasks"][task]["gauc"] == pytest.approx(expected["gauc"], rel=1e-12)
        assert report["tasks"][task]["gauc_users"] == expected["gauc_users"] > 0
    assert report["tasks"]["a"]["ne_train_prior"] is not None
    assert "GAUC" in (tmp_path / "r" / "report.md").read_text()


def _write(path: Path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=4)


def _good_columns(rows: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"{t}_{kind}": (rng.random(rows) if kind == "pred" else rng.integers(0, 2, rows))
            for t in TASKS for kind in ("pred", "label")}


def test_missing_column_names_file_and_column(tmp_path):
    columns = _good_columns()
    del columns["b_pred"]
    _write(tmp_path / "x.parquet", **columns)
    with pytest.raises(DataError, match=r"x\.parquet: missing column 'b_pred'"):
        run_metrics(_job(tmp_path / "*.parquet", tmp_path / "out"))


def test_bad_value_names_file_row_group_and_column(tmp_path):
    columns = _good_columns()
    columns["a_pred"][9] = 1.5  # row group 2 (4 rows per group)
    _write(tmp_path / "x.parquet", **columns)
    with pytest.raises(DataError, match=r"x\.parquet row group 2: column 'a_pred': 1 of 2 values .* outside \[0, 1\]"):
        run_metrics(_job(tmp_path / "*.parquet", tmp_path / "out"))
    columns = _good_columns()
    columns["b_label"] = pa.array([0, 1, None, 1, 0, 0, 1, 0, 1, 1], pa.int8())
    _write(tmp_path / "x.parquet", **columns)
    with pytest.raises(DataError, match=r"row group 0: column 'b_label': 1 of 4 values are NaN/null"):
        run_metrics(_job(tmp_path / "*.parquet", tmp_path / "out"))


def test_corrupt_data_pages_name_file_and_row_group(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table(_good_columns(1000)), path, compression="none")
    data = bytearray(path.read_bytes())
    data[10:3000] = b"\xff" * 2990  # the first data pages; the footer stays readable
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"x\.parquet row group 0: cannot read"):
        run_metrics(_job(path, tmp_path / "out"))


@pytest.mark.parametrize("option", ["weight_column", "user_column", "segment_by"])
def test_a_named_column_that_is_missing_names_column_and_file(tmp_path, option, capsys):
    _write(tmp_path / "x.parquet", **_good_columns(), weight=np.ones(10))
    with pytest.raises(DataError, match=r"x\.parquet: missing column 'nosuch'"):
        run_metrics(_job(tmp_path / "x.parquet", tmp_path / "out", **{option: "nosuch"}))
    with pytest.raises(SystemExit) as e:
        cli_main(["metrics", "--predictions", str(tmp_path / "x.parquet"), "--tasks", ",".join(TASKS),
                  "--out", str(tmp_path / "out"), f"--{option.replace('_', '-')}", "nosuch"])
    assert e.value.code == 2 and "x.parquet: missing column 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_weight_column_default_and_explicit(tmp_path):
    columns = _good_columns()
    _write(tmp_path / "x.parquet", **columns, w=np.arange(10, dtype=np.float64))
    default = run_metrics(_job(tmp_path / "x.parquet", tmp_path / "default", plots=False))
    assert default["inputs"]["weight_column"] is None  # no 'weight' column and none named: weight 1
    assert default["rows"] == 10 and default["tasks"]["a"]["weighted_count"] == 10.0
    named = run_metrics(_job(tmp_path / "x.parquet", tmp_path / "named", weight_column="w", plots=False))
    assert named["inputs"]["weight_column"] == "w"
    assert named["rows"] == 9 and named["tasks"]["a"]["weighted_count"] == 45.0  # row 0 has weight 0


def test_non_numeric_and_inconsistent_optional_columns(tmp_path):
    columns = _good_columns()
    _write(tmp_path / "s" / "x.parquet", **{**columns, "a_label": np.array(["yes"] * 10)})
    with pytest.raises(DataError, match="'a_label' has type string, expected a number"):
        run_metrics(_job(tmp_path / "s", tmp_path / "out"))
    _write(tmp_path / "w" / "x.parquet", **columns, weight=np.ones(10))
    _write(tmp_path / "w" / "y.parquet", **columns)
    with pytest.raises(DataError, match=r"'weight' is in 1 of 2 files but missing from \[.*y\.parquet"):
        run_metrics(_job(tmp_path / "w", tmp_path / "out"))


def test_empty_files_are_counted_or_errors(tmp_path):
    columns = _good_columns()
    _write(tmp_path / "d" / "full.parquet", **columns)
    _write(tmp_path / "d" / "no_rows.parquet", **{k: v[:0] for k, v in columns.items()})
    report = run_metrics(_job(tmp_path / "d", tmp_path / "out", plots=False))
    assert report["inputs"]["empty_files"] == 1 and report["rows"] == 10
    _write(tmp_path / "e" / "no_rows.parquet", **{k: v[:0] for k, v in columns.items()})
    with pytest.raises(DataError, match="no rows in 1 Parquet file"):
        run_metrics(_job(tmp_path / "e", tmp_path / "out"))
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "zero.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.parquet: empty file \(0 bytes\)"):
        run_metrics(_job(tmp_path / "z", tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        run_metrics(_job(tmp_path / "nothing-*.parquet", tmp_path / "out"))


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["metrics", "--predictions", str(tmp_path / "none*.parquet"), "--tasks", "a", "--out", str(tmp_path)])
    assert e.value.code == 2 and "no files match" in capsys.readouterr().err


def test_crash_mid_write_leaves_no_report_json_and_keeps_the_previous_numbers(logs, tmp_path, monkeypatch):
    directory, _ = logs
    out = tmp_path / "report"
    first = run_metrics(_job(directory, out, plots=False))
    assert (out / "report.json").exists() and not (out / "report.previous.json").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the report")

    monkeypatch.setattr(report_module, "render_markdown", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_metrics(_job(directory, out, auc_mode="exact", plots=False))
    assert not (out / "report.json").exists()
    assert json.loads((out / "report.previous.json").read_text())["tasks"] == json.loads(json.dumps(first["tasks"]))
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    run_metrics(_job(directory, out, auc_mode="exact", plots=False))
    assert json.loads((out / "report.json").read_text())["auc_mode"] == "exact"
    assert not (out / "report.previous.json").exists()


def test_compare_prints_ne_diff_percent(logs, tmp_path, capsys):
    directory, _ = logs
    a = tmp_path / "a"
    run_metrics(_job(directory, a, plots=False))
    b = tmp_path / "b"
    b.mkdir()
    report_b = json.loads((a / "report.json").read_text())
    report_b["tasks"]["a"]["ne"] = report_b["tasks"]["a"]["ne"] * 0.98
    report_b["tasks"]["b"]["auc"] = report_b["tasks"]["b"]["auc"] + 0.001
    (b / "report.json").write_text(json.dumps(report_b))
    text = compare_reports(a, b / "report.json")
    row_a = next(line for line in text.splitlines() if line.startswith("| a |"))
    row_b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert "-2.000%" in row_a and "+0.000%" in row_b and "+0.001000" in row_b
    cli_main(["compare", str(a), str(b)])
    assert "NE diff %" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no report"):
        compare_reports(a, tmp_path / "missing")


def test_compare_refuses_reports_of_different_examples_unless_asked(logs, tmp_path, capsys):
    """Two models scored on different splits (valid vs test) are no A/B: refused, naming the task."""
    directory, _ = logs
    a = tmp_path / "a"
    run_metrics(_job(directory, a, plots=False))
    report = json.loads((a / "report.json").read_text())
    report["tasks"]["a"]["positive_rate"] *= 1.01  # another split: other labels, whatever the rows
    b = tmp_path / "b"
    b.mkdir()
    (b / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"not computed on the same examples \(task a: positive_rate .* in A, .* in B"):
        compare_reports(a, b)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(a), str(b)])
    assert exit_info.value.code == 2 and "--different-data" in capsys.readouterr().err
    text = compare_reports(a, b, different_data=True)
    assert "DIFFERENT EXAMPLES (--different-data): task a: positive_rate" in text and "| a |" in text
    assert "same examples" in compare_reports(a, a)
