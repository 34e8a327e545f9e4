"""Throughput and peak memory of the metrics path, side by side with scikit-learn and torchrec.metrics.

    .venv/bin/python benchmarks/eval_throughput.py [--small 10000000] [--large 100000000] [--json OUT]

Every measurement runs in its own subprocess (`--worker NAME`) so that its peak RSS is its own.
All of them see the same data: 3 binary tasks, CTR-like float32 predictions (sigmoid of
N(-3.5, 1.2) logits, base rate ~5%) with labels drawn from them, generated in 1Mi-row chunks from
a fixed seed. Timings cover the metric work only (update + compute), not data generation, except
`mtrec metrics` over Parquet, which times the whole command over a log written beforehand (reading,
report and plots included; the one-off imports are reported apart). Rows/s is rows of all 3 tasks
per wall second; CPU seconds are given too because a shared machine makes wall time noisy.

- mtrec (bounded / exact): MultiTaskMetrics.update per chunk; 100M rows are streamed, never materialised.
- scikit-learn: roc_auc_score + log_loss per task over the materialised arrays (10M only: it needs
  every row in memory, several copies during the sort).
- torchrec.metrics: NEMetric + AUCMetric (window = all rows, so the AUC is over the whole set like
  the others; it keeps every prediction and all-gathers/sorts them at compute).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("a", "b", "c")
CHUNK_ROWS = 1 << 20
SEED = 0


def chunks(rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(preds, labels) [n, 3] float32 chunks summing to `rows`, the same for every worker."""
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        rng = np.random.default_rng([SEED, index])
        preds = (1.0 / (1.0 + np.exp(-rng.normal(-3.5, 1.2, (n, len(TASKS)))))).astype(np.float32)
        labels = (rng.random((n, len(TASKS)), dtype=np.float32) < preds).astype(np.float32)
        yield preds, labels


def _result(rows: int, wall: float, cpu: float, metrics: dict[str, dict[str, float]]) -> dict:
    return {"rows": rows, "seconds": wall, "cpu_seconds": cpu, "rows_per_s": rows / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "metrics": metrics}


class _Clock:
    """Sums wall and process CPU time over the timed sections only."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "_Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def worker_mtrec(rows: int, mode: str) -> dict:
    from models.inputs import Task
    from pipeline.metrics.multitask import MultiTaskMetrics

    metrics = MultiTaskMetrics([Task(t) for t in TASKS], auc_mode=mode)
    clock = _Clock()
    for preds, labels in chunks(rows):
        with clock:
            metrics.update(preds, labels)
    with clock:
        report = metrics.compute()["tasks"]
    keys = ("auc", "auc_error_bound", "logloss", "ne")
    return _result(rows, clock.wall, clock.cpu, {t: {k: report[t][k] for k in keys} for t in TASKS})


def worker_sklearn(rows: int) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    parts = list(chunks(rows))
    preds, labels = (np.concatenate(column) for column in zip(*parts))
    del parts
    out = {}
    clock = _Clock()
    for t, name in enumerate(TASKS):
        with clock:
            out[name] = {"auc": float(roc_auc_score(labels[:, t], preds[:, t])),
                         "logloss": float(log_loss(labels[:, t], preds[:, t]))}
    return _result(rows, clock.wall, clock.cpu, out)


def worker_torchrec(rows: int) -> dict:
    import torch
    from torchrec.metrics.auc import AUCMetric
    from torchrec.metrics.metrics_config import RecTaskInfo
    from torchrec.metrics.ne import NEMetric

    tasks = [RecTaskInfo(name=t, label_name=f"{t}_label", prediction_name=f"{t}_pred", weight_name=f"{t}_weight")
             for t in TASKS]
    options = dict(world_size=1, my_rank=0, batch_size=CHUNK_ROWS, tasks=tasks, window_size=rows)
    ne, auc = NEMetric(**options), AUCMetric(**options)
    clock = _Clock()
    for preds, labels in chunks(rows):
        p, y = torch.from_numpy(preds), torch.from_numpy(labels)
        with clock:
            inputs = dict(predictions={t: p[:, i] for i, t in enumerate(TASKS)},
                          labels={t: y[:, i] for i, t in enumerate(TASKS)},
                          weights={t: torch.ones(len(p)) for t in TASKS})
            ne.update(**inputs)
            auc.update(**inputs)
    with clock:
        values = {**ne.compute(), **auc.compute()}
    return _result(rows, clock.wall, clock.cpu, {t: {"auc": float(values[f"auc-{t}|window_auc"]),
                                                    "ne": float(values[f"ne-{t}|lifetime_ne"])} for t in TASKS})


def write_parquet_log(directory: Path, rows: int) -> None:
    """The benchmark data as a Parquet prediction log: one file per 1Mi-row chunk (float32 preds, int8 labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for index, (preds, labels) in enumerate(chunks(rows)):
        table = pa.table({**{f"{t}_pred": preds[:, i] for i, t in enumerate(TASKS)},
                          **{f"{t}_label": labels[:, i].astype(np.int8) for i, t in enumerate(TASKS)}})
        pq.write_table(table, directory / f"part-{index:04d}.parquet")


def worker_cli(rows: int, log_dir: str) -> dict:
    """The whole `mtrec metrics` command (Parquet reading, report and plots included), in this process.

    The one-off imports (torch, pyarrow, matplotlib: a few seconds) are timed apart as `import_seconds`."""
    started = time.perf_counter()
    from pipeline.cli import main
    from pipeline.eval import metrics_job, plots  # noqa: F401  (what `main` imports lazily)

    import_seconds = time.perf_counter() - started
    out = Path(tempfile.mkdtemp(prefix="mtrec-bench-report-"))
    clock = _Clock()
    with clock:
        main(["metrics", "--predictions", log_dir, "--tasks", ",".join(TASKS), "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == rows, report["rows"]
    metrics = {t: {"auc": report["tasks"][t]["auc"], "ne": report["tasks"][t]["ne"]} for t in TASKS}
    return {**_result(rows, clock.wall, clock.cpu, metrics), "import_seconds": import_seconds}


WORKERS: dict[str, Callable[..., dict]] = {
    "mtrec-bounded": lambda rows, _: worker_mtrec(rows, "bounded"),
    "mtrec-exact": lambda rows, _: worker_mtrec(rows, "exact"),
    "sklearn": lambda rows, _: worker_sklearn(rows),
    "torchrec": lambda rows, _: worker_torchrec(rows),
    "mtrec-cli": worker_cli,
}
LABELS = {"mtrec-bounded": "mtrec MultiTaskMetrics (bounded AUC)", "mtrec-exact": "mtrec MultiTaskMetrics (exact AUC)",
          "sklearn": "scikit-learn roc_auc_score + log_loss", "torchrec": "torchrec.metrics NEMetric + AUCMetric",
          "mtrec-cli": "`mtrec metrics` over Parquet (end to end)"}


def run_worker(name: str, rows: int, log_dir: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--rows", str(rows), "--log-dir", log_dir],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} ({rows} rows) failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["worker"], result["label"] = name, LABELS[name]
    imports = f" + {result['import_seconds']:.1f} s imports" if "import_seconds" in result else ""
    print(f"{LABELS[name]:48s} {rows:>12,} rows {result['seconds']:8.2f} s {result['rows_per_s']:>12,.0f} rows/s "
          f"(cpu {result['cpu_seconds']:.2f} s) peak RSS {result['peak_rss_mb']:7.0f} MB{imports}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000_000)
    parser.add_argument("--large", type=int, default=100_000_000)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.rows, args.log_dir)))
        return

    started = time.perf_counter()
    results = [run_worker("mtrec-bounded", args.small), run_worker("mtrec-exact", args.small),
               run_worker("sklearn", args.small), run_worker("torchrec", args.small),
               run_worker("mtrec-bounded", args.large)]
    with tempfile.TemporaryDirectory(prefix="mtrec-bench-log-") as log_dir:
        write_parquet_log(Path(log_dir), args.small)
        results.append(run_worker("mtrec-cli", args.small, log_dir))
    by_name = {(r["worker"], r["rows"]): r for r in results}
    sklearn, ours = by_name[("sklearn", args.small)], by_name[("mtrec-bounded", args.small)]
    print(f"mtrec (bounded) / scikit-learn at {args.small:,} rows: {ours['rows_per_s'] / sklearn['rows_per_s']:.1f}x "
          f"rows/s (wall), {sklearn['cpu_seconds'] / ours['cpu_seconds']:.1f}x (CPU time)")
    worst = max(abs(ours["metrics"][t]["auc"] - sklearn["metrics"][t]["auc"]) for t in TASKS)
    bound = max(ours["metrics"][t]["auc_error_bound"] for t in TASKS)
    ll = max(abs(ours["metrics"][t]["logloss"] - sklearn["metrics"][t]["logloss"]) for t in TASKS)
    print(f"max |AUC mtrec bounded - sklearn| = {worst:.2e} (reported bound {bound:.2e}); "
          f"max |logloss diff| = {ll:.1e}")
    print(f"total benchmark wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
