"""What a person watching a run sees: the progress bar (a tqdm bar on a terminal, a periodic log
line elsewhere), a JSON-lines metrics log (RUN/metrics.jsonl) and TensorBoard scalars
(RUN/tensorboard/). Rank 0 only."""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

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


class ProgressBar:
    """Training progress on rank 0, with tqdm's update / set_postfix / close.

    On a terminal it is a tqdm bar. Anywhere else (torchrun and TorchX pipe the output, CI writes a
    file) every redraw of a bar would become a line of its own, so it logs a line per tenth of the
    run (at most one per `min_s` seconds), or every `max_s` seconds when a tenth takes longer, and
    one at the end.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train",
                 min_s: float = 5.0, max_s: float = 60.0) -> None:
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
                     if enabled and sys.stderr.isatty() else None)
        self._log_lines = enabled and self._bar is None
        self.total, self.n, self.desc = total, initial, desc
        self._min_s, self._max_s, self._tenth = min_s, max_s, max(1, total // 10)
        self._start_n, self._start = initial, time.monotonic()
        self._logged_n, self._logged_at = initial, self._start
        self._postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log_lines:
            waited = time.monotonic() - self._logged_at
            if waited >= self._max_s or (waited >= self._min_s and self.n - self._logged_n >= self._tenth):
                self._log()

    def set_total(self, total: int) -> None:
        """A better estimate of the run's length (an epoch's step count is known when it starts)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._log_lines and self.n > self._logged_n:
            self._log()

    def _log(self) -> None:
        now = time.monotonic()
        self._logged_n, self._logged_at = self.n, now
        elapsed = now - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        left = f", ~{_duration((self.total - self.n) / rate)} left" if rate > 0 and self.total > self.n else ""
        postfix = "".join(f", {key} {value}" for key, value in self._postfix.items())
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        log.info("%s: step %d/%d%s%s, %.1f step/s, %s elapsed%s", self.desc, self.n, self.total, share, postfix,
                 rate, _duration(elapsed), left)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
