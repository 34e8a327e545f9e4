"""`SegmentedMetrics`: one `MultiTaskMetrics` per value of a segment column (e.g. country).

Same update / merge / all-reduce / compute shape as `MultiTaskMetrics`; ranks agree on the union of
segment values before reducing, so a value seen by one rank only is still reported.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from models.inputs import Task
from pipeline.metrics.multitask import MultiTaskMetrics
from pipeline.metrics.numerics import to_numpy
from pipeline.metrics.task_state import AucMode
from pipeline.runtime.collectives import all_gather_rows, group_world_size

SEGMENT_MANTISSA_BITS = 7  # [project] 16,257 bins per task and segment: keeps many segments affordable


class SegmentedMetrics:
    """`MultiTaskMetrics` per value of a segment column (e.g. country), created as values appear.

    The histogram resolution defaults to SEGMENT_MANTISSA_BITS (coarser, so memory stays
    O(segments × tasks × 16k bins)); `max_segments` bounds it and is a clear error when exceeded.
    """

    def __init__(self, tasks: Sequence[Task], auc_mode: AucMode = "bounded", *,
                 baseline_rates: Mapping[str, float] | None = None, mantissa_bits: int = SEGMENT_MANTISSA_BITS,
                 max_segments: int = 64):
        self.tasks, self.auc_mode, self.mantissa_bits = tuple(tasks), auc_mode, mantissa_bits
        self.baseline_rates = baseline_rates
        self.max_segments = max_segments
        self.segments: dict[str, MultiTaskMetrics] = {}

    def update(self, segment_codes: Any, segment_names: Sequence[str], preds: Any, labels: Any,
               masks: Any = None, weights: Any = None) -> None:
        """segment_codes [B] int indices into segment_names (this batch's dictionary); the rest as
        MultiTaskMetrics.update."""
        codes = to_numpy(segment_codes).astype(np.int64, copy=False)
        preds, labels = to_numpy(preds), to_numpy(labels)
        masks = None if masks is None else to_numpy(masks)
        weights = None if weights is None else to_numpy(weights)
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(segment_names)))])
        for code, name in enumerate(segment_names):
            rows = order[bounds[code]:bounds[code + 1]]
            if len(rows):
                self._segment(str(name)).update(preds[rows], labels[rows], None if masks is None else masks[rows],
                                                None if weights is None else weights[rows])

    def merge_(self, other: "SegmentedMetrics") -> None:
        for name, metrics in other.segments.items():
            self._segment(name).merge_(metrics)

    def all_reduce_(self, group: Any = None) -> None:
        """Agree on the union of segment names (all-gather), then all-reduce each segment in name order."""
        if group_world_size(group) <= 1:
            return
        # One JSON line per rank (JSON escapes newlines inside strings, so lines separate ranks).
        encoded = np.frombuffer((json.dumps(sorted(self.segments)) + "\n").encode(), dtype=np.uint8)
        text = all_gather_rows(encoded[:, None], group)[:, 0].tobytes().decode()
        names = set().union(*(json.loads(line) for line in text.splitlines()))
        for name in sorted(names):
            self._segment(name).all_reduce_(group)

    def compute(self) -> dict[str, dict[str, Any]]:
        return {name: self.segments[name].compute() for name in sorted(self.segments)}

    def _segment(self, name: str) -> MultiTaskMetrics:
        if name not in self.segments:
            if len(self.segments) >= self.max_segments:
                raise ValueError(f"more than {self.max_segments} segment values (at {name!r}); "
                                 "segment by a coarser column")
            self.segments[name] = MultiTaskMetrics(self.tasks, self.auc_mode, baseline_rates=self.baseline_rates,
                                                   mantissa_bits=self.mantissa_bits)
        return self.segments[name]
