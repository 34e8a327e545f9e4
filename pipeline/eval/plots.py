"""Per-task PNG plots from the score histograms: reliability diagram and ROC curve.

Matplotlib's object API with the Agg canvas (no pyplot, so no global figure state). Both plots use
only the bounded-memory histogram (pos_b, neg_b): the reliability diagram re-bins it into
equal-mass groups and places each bin at its score midpoint (relative error ≤ 2^-(k+1) of the
prediction, far below what a plot resolves) [project].
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.runtime.atomic import atomic_path
from pipeline.metrics.auc import bin_midpoints, roc_points, tie_averaged_auc

RELIABILITY_GROUPS = 20  # [project] equal-mass groups: every point averages ~5% of the rows


def reliability_groups(pos: np.ndarray, neg: np.ndarray, mantissa_bits: int,
                       groups: int = RELIABILITY_GROUPS) -> tuple[np.ndarray, np.ndarray]:
    """(mean prediction, positive rate) [≤ groups] each, over equal-mass groups of adjacent bins.

    pos, neg: [num_bins] masses in ascending score order. A bin is never split, so one heavy bin
    (many identical predictions) forms a group of its own.
    """
    mass = pos + neg
    used = mass > 0
    mass, pos, mid = mass[used], pos[used], bin_midpoints(mantissa_bits)[used]
    centre_of_mass = np.cumsum(mass) - mass / 2
    group = np.minimum((centre_of_mass / mass.sum() * groups).astype(np.int64), groups - 1)
    group_mass = np.bincount(group, weights=mass, minlength=groups)
    present = group_mass > 0
    mean_pred = np.bincount(group, weights=mass * mid, minlength=groups)[present] / group_mass[present]
    rate = np.bincount(group, weights=pos, minlength=groups)[present] / group_mass[present]
    return mean_pred, rate


def save_png(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def plot_reliability(task: str, pos: np.ndarray, neg: np.ndarray, mantissa_bits: int, path: Path) -> None:
    mean_pred, rate = reliability_groups(pos, neg, mantissa_bits)
    top = 1.05 * max(float(mean_pred.max()), float(rate.max()), 1e-6)
    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect calibration")
    ax.plot(mean_pred, rate, marker="o", label=f"{len(rate)} equal-mass groups")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean prediction", ylabel="observed positive rate",
           title=f"{task}: reliability diagram")
    ax.legend(loc="upper left")
    save_png(figure, path)


def plot_roc(task: str, pos: np.ndarray, neg: np.ndarray, path: Path) -> None:
    used = (pos + neg) > 0
    fpr, tpr = roc_points(pos[used], neg[used])
    auc = tie_averaged_auc(pos, neg)
    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.plot(fpr, tpr, label=f"histogram AUC {auc.auc:.5f} ± {auc.error_bound:.1e}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate",
           title=f"{task}: ROC")
    ax.legend(loc="lower right")
    save_png(figure, path)


def safe_file_stem(task: str) -> str:
    """A task name usable as a file name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", task)


def write_task_plots(plot_dir: Path, histograms: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     mantissa_bits: int) -> dict[str, dict[str, str]]:
    """Write `<task>_reliability.png` and `<task>_roc.png` per task into plot_dir.

    Returns {task: {"reliability": file name, "roc": file name}} for the plots that exist: a task
    without rows has no plot, one without both classes has no ROC.
    """
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, str]] = {}
    for task, (pos, neg) in histograms.items():
        stem, files = safe_file_stem(task), {}
        if pos.sum() + neg.sum() > 0:
            files["reliability"] = f"{stem}_reliability.png"
            plot_reliability(task, pos, neg, mantissa_bits, plot_dir / files["reliability"])
        if pos.sum() > 0 and neg.sum() > 0:
            files["roc"] = f"{stem}_roc.png"
            plot_roc(task, pos, neg, plot_dir / files["roc"])
        written[task] = files
    return written
