"""The evaluation report: REPORT_DIR/report.json, report.md, plots/*.png; and `mtrec compare`.

Completeness protocol [project]: report.json is written last, so its presence means the report in
REPORT_DIR is complete and consistent. Rewriting a report first renames the previous report.json to
report.previous.json (deleted once the new report.json is in place): an interrupted rewrite leaves
no report.json, yet the previous finished numbers survive. Every file is written to a temporary
name and renamed (pipeline/runtime/atomic.py). Other files in REPORT_DIR (e.g. predictions) are kept.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.metrics.auc import DEFAULT_MANTISSA_BITS
from pipeline.runtime.atomic import atomic_write_text

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREVIOUS_JSON = "report.previous.json"
PLOT_DIR = "plots"


def write_report(report_dir: str | os.PathLike, report: Mapping[str, Any],
                 histograms: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 mantissa_bits: int = DEFAULT_MANTISSA_BITS) -> Path:
    """Write report.md, the plots (when histograms are given) and report.json, in that order.

    report: {"rows": N, "tasks": {name: {...}}, ...} as MultiTaskMetrics.compute() (plus extras).
    histograms / mantissa_bits: MultiTaskMetrics.histograms() and .mantissa_bits, for the plots.
    Returns the path of report.json. Raises ValueError for NaN/inf in the report (never written).
    """
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    final_json = out / REPORT_JSON
    if final_json.exists():
        os.replace(final_json, out / PREVIOUS_JSON)
    full = dict(report)
    if histograms:
        from pipeline.eval.plots import write_task_plots  # matplotlib: imported only when plots are written

        full["plots"] = {task: {kind: f"{PLOT_DIR}/{name}" for kind, name in files.items()}
                         for task, files in write_task_plots(out / PLOT_DIR, histograms, mantissa_bits).items()}
    text = json.dumps(full, indent=2, allow_nan=False) + "\n"  # fail before anything claims completeness
    atomic_write_text(out / REPORT_MD, render_markdown(full))
    atomic_write_text(final_json, text)
    (out / PREVIOUS_JSON).unlink(missing_ok=True)
    return final_json


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report from REPORT_DIR or its report.json; FileNotFoundError when it is missing (or incomplete)."""
    p = Path(path)
    file = p / REPORT_JSON if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no report (missing, or the report was never completed)")
    try:
        report = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not a valid report.json ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise ValueError(f"{file}: not a report.json (no 'tasks' object)")
    return report


# ----------------------------------------------------------------------------- Markdown


def _fmt(value: Any, spec: str = ".6g") -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_auc(metrics: Mapping[str, Any]) -> str:
    if metrics.get("auc") is None:
        return "n/a"
    bound = metrics.get("auc_error_bound")
    return f"{metrics['auc']:.6f}" + ("" if not bound else f" ± {bound:.1e}")


_BINARY_COLUMNS = [("rows", lambda m: f"{m['count']:,}"), ("positive rate", lambda m: _fmt(m["positive_rate"])),
                   ("mean pred", lambda m: _fmt(m["mean_pred"])), ("calibration", lambda m: _fmt(m["calibration"])),
                   ("logloss", lambda m: _fmt(m["logloss"])), ("NE", lambda m: _fmt(m["ne"])),
                   ("AUC ± bound", _fmt_auc)]
_OPTIONAL_BINARY_COLUMNS = [("ne_train_prior", "NE (train prior)"), ("gauc", "GAUC")]
_REGRESSION_COLUMNS = [("rows", lambda m: f"{m['count']:,}"), ("mean pred", lambda m: _fmt(m["mean_pred"])),
                       ("mean label", lambda m: _fmt(m["mean_label"])), ("MSE", lambda m: _fmt(m["mse"])),
                       ("MAE", lambda m: _fmt(m["mae"]))]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(r) + " |" for r in [header, align] + rows]


def _task_tables(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    binary = {n: m for n, m in tasks.items() if m.get("kind", "binary") == "binary"}
    regression = {n: m for n, m in tasks.items() if m.get("kind") == "regression"}
    if binary:
        extra = [(key, title) for key, title in _OPTIONAL_BINARY_COLUMNS if any(key in m for m in binary.values())]
        header = ["task"] + [t for t, _ in _BINARY_COLUMNS] + [t for _, t in extra]
        rows = [[name] + [f(m) for _, f in _BINARY_COLUMNS] + [_fmt(m.get(key)) for key, _ in extra]
                for name, m in binary.items()]
        lines += _table(header, rows) + [""]
    if regression:
        rows = [[name] + [f(m) for _, f in _REGRESSION_COLUMNS] for name, m in regression.items()]
        lines += _table(["task"] + [t for t, _ in _REGRESSION_COLUMNS], rows) + [""]
    nulls = [f"- {name}.{key}: {reason}" for name, m in tasks.items()
             for key, reason in m.get("null_reasons", {}).items()]
    if nulls:
        lines += ["n/a values:"] + nulls + [""]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = ["# Evaluation report", "",
             f"rows: {report['rows']:,} · AUC mode: {report.get('auc_mode', 'n/a')}", ""]
    lines += _task_tables(report["tasks"])
    segments = report.get("segments")
    if segments:
        lines += [f"## Segments by `{segments['column']}`", ""]
        for value, seg in segments["values"].items():
            lines += [f"### {value} ({seg['rows']:,} rows)", ""] + _task_tables(seg["tasks"])
    for task, files in report.get("plots", {}).items():
        lines += [f"![{task} {kind}]({name})" for kind, name in files.items()]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- compare


def _diff_percent(a: float | None, b: float | None) -> str:
    """100·(b − a)/a, the AdaTT "NE diff %" (negative is better for NE/MSE)."""
    if a is None or b is None or a == 0:
        return "n/a"
    return f"{100.0 * (b - a) / a:+.3f}%"


def _delta(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{b - a:+.6f}"


# The label statistics of a task that depend on the examples only, never on the model.
_LABEL_KEYS = ("count", "weighted_count", "positive_rate", "mean_label")


class DifferentDataError(ValueError):
    """Two reports to compare were not computed on the same examples."""


def label_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """One line per task in both reports whose label statistics differ: the two reports were
    computed on different examples. Equal up to 1e-9 relative (sums in another rank order)."""
    lines = []
    for name in (n for n in a["tasks"] if n in b["tasks"]):
        ma, mb = a["tasks"][name], b["tasks"][name]
        for key in _LABEL_KEYS:
            va, vb = ma.get(key), mb.get(key)
            if va is None or vb is None:  # not in one report (an older one) or null (no rows: count says it)
                continue
            if not np.isclose(va, vb, rtol=1e-9, atol=1e-12):
                lines.append(f"task {name}: {key} {_fmt(va)} in A, {_fmt(vb)} in B")
                break
    return lines


def _data_of(report: Mapping[str, Any]) -> str:
    """What a report scored: `mtrec evaluate`'s --data, or `mtrec metrics`'s --predictions."""
    return str(report.get("data", report.get("inputs", {}).get("predictions", "?")))


def compare_reports(path_a: str | os.PathLike, path_b: str | os.PathLike, different_data: bool = False) -> str:
    """Per-task deltas of report B against report A as a Markdown table.

    Binary tasks: NE A, NE B, NE diff % = 100·(NE_B − NE_A)/NE_A, AUC A, AUC B, AUC delta,
    calibration A and B. Regression tasks: MSE and MAE with diff %. A task missing from one report
    shows n/a. A and B must hold the same examples (every shared task's label count, weight and
    positive rate or label mean agree), else DifferentDataError, unless `different_data`: the
    deltas of two models are only theirs on the same log.
    """
    a, b = load_report(path_a), load_report(path_b)
    mismatch = label_differences(a, b)
    if mismatch and not different_data:
        raise DifferentDataError(
            f"{path_a} and {path_b} were not computed on the same examples ({'; '.join(mismatch)}; data "
            f"{_data_of(a)} vs {_data_of(b)}): their deltas would mix the models with the data. Score both "
            "models on the same split, or pass --different-data to compare anyway")
    names = list(a["tasks"]) + [n for n in b["tasks"] if n not in a["tasks"]]
    empty: dict[str, Any] = {}
    binary, regression = [], []
    for name in names:
        ma, mb = a["tasks"].get(name, empty), b["tasks"].get(name, empty)
        kind = ma.get("kind") or mb.get("kind") or "binary"
        if kind == "regression":
            regression.append([name] + [cell for key in ("mse", "mae")
                                        for cell in (_fmt(ma.get(key)), _fmt(mb.get(key)),
                                                     _diff_percent(ma.get(key), mb.get(key)))])
        else:
            binary.append([name, _fmt(ma.get("ne")), _fmt(mb.get("ne")), _diff_percent(ma.get("ne"), mb.get("ne")),
                           _fmt(ma.get("auc")), _fmt(mb.get("auc")), _delta(ma.get("auc"), mb.get("auc")),
                           _fmt(ma.get("calibration")), _fmt(mb.get("calibration"))])
    lines = [f"A: {path_a} ({a.get('rows', 0):,} rows)", f"B: {path_b} ({b.get('rows', 0):,} rows)",
             ("DIFFERENT EXAMPLES (--different-data): " + "; ".join(mismatch) if mismatch else
              "same examples: the shared tasks' label counts and rates agree"), ""]
    if binary:
        lines += _table(["task", "NE A", "NE B", "NE diff %", "AUC A", "AUC B", "AUC delta",
                         "calibration A", "calibration B"], binary) + [""]
    if regression:
        lines += _table(["task", "MSE A", "MSE B", "MSE diff %", "MAE A", "MAE B", "MAE diff %"], regression) + [""]
    lines.append("NE/MSE diff % = 100·(B − A)/A: negative means B is better.")
    return "\n".join(lines)
