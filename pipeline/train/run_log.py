"""What a person watching a run sees besides the progress bar: a JSON-lines metrics log
(RUN/metrics.jsonl) and TensorBoard scalars (RUN/tensorboard/). Rank 0 only."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self._enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            self._jsonl = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        """One JSON line {"kind", "step", "time", **values}; numeric leaves also go to TensorBoard
        as `<kind>/<key>` (nested dicts flattened with '/')."""
        if not self._enabled:
            return
        self._jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        for key, value in _flatten(values):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tb.close()


def _flatten(values: Mapping[str, Any], prefix: str = ""):
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}/")
        else:
            yield name, value
