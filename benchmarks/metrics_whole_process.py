"""Whole-process `mtrec metrics` against scikit-learn over the same Parquet prediction log, and start-up.

    .venv/bin/python benchmarks/metrics_whole_process.py [--rows 20000000] [--work DIR] [--json OUT]

Every measurement is one child process timed from spawn to exit (imports included): wall seconds,
CPU seconds (user + system) and peak RSS from `os.wait4`. The log is the data of
benchmarks/eval_throughput.py (3 binary tasks, float32 predictions, int8 labels, one Parquet file
per 1Mi rows), written once into WORK/log-ROWS and reused.

- `mtrec metrics` (the console script), with its plots and with --no-plots.
- scikit-learn: pyarrow reads the same columns of the same files, then roc_auc_score + log_loss
  per task (`--sklearn-worker`, a child of this script).
- start-up: `mtrec metrics --no-plots` over a 10,000-row log (median of 5), next to the bare
  import of what a 1-process job no longer imports (torch.distributed and matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_throughput import REPO, TASKS, write_parquet_log  # this directory is on sys.path when run as a script

MTREC = Path(sys.executable).parent / "mtrec"
STARTUP_ROWS, STARTUP_REPEATS = 10_000, 5


def timed(cmd: list[str]) -> dict:
    """Run `cmd` from the repo root; its wall and CPU seconds, peak RSS and the last line of its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, unlike RUSAGE_CHILDREN
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-4000:]}")
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "stdout": (stdout.strip().splitlines() or [""])[-1]}


def ensure_log(directory: Path, rows: int) -> None:
    """Write the benchmark log unless a complete one with `rows` rows is there already."""
    marker = directory / "_ROWS"  # "_": not a data file to pyarrow, not *.parquet to mtrec
    if marker.is_file() and int(marker.read_text()) == rows:
        return
    write_parquet_log(directory, rows)
    marker.write_text(str(rows))


def sklearn_worker(log_dir: str) -> None:
    """Read the log's prediction and label columns with pyarrow, then AUC and log loss per task; prints JSON."""
    import pyarrow.parquet as pq
    from sklearn.metrics import log_loss, roc_auc_score

    table = pq.read_table(log_dir, columns=[f"{t}_{kind}" for t in TASKS for kind in ("pred", "label")])
    out = {}
    for t in TASKS:
        pred, label = table.column(f"{t}_pred").to_numpy(), table.column(f"{t}_label").to_numpy()
        out[t] = {"auc": float(roc_auc_score(label, pred)), "logloss": float(log_loss(label, pred))}
    print(json.dumps(out))


def run_mtrec(log_dir: Path, out: Path, *options: str) -> dict:
    result = timed([str(MTREC), "metrics", "--predictions", str(log_dir), "--tasks", ",".join(TASKS),
                    "--out", str(out), *options])
    report = json.loads((out / "report.json").read_text())
    result["rows"] = report["rows"]
    result["metrics"] = {t: {k: report["tasks"][t][k] for k in ("auc", "auc_error_bound", "logloss")} for t in TASKS}
    return result


def _row(label: str, r: dict) -> str:
    return (f"{label:44s} {r['seconds']:8.2f} s wall {r['cpu_seconds']:8.2f} s CPU "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--work", default="/tmp/mtrec-metrics-bench", help="log and reports (outside the repo)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--sklearn-worker", metavar="LOG_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sklearn_worker:
        sklearn_worker(args.sklearn_worker)
        return

    work = Path(args.work)
    log_dir, small_dir = work / f"log-{args.rows}", work / f"log-{STARTUP_ROWS}"
    ensure_log(log_dir, args.rows)
    ensure_log(small_dir, STARTUP_ROWS)
    print(f"{args.rows:,} rows x {len(TASKS)} tasks, one process each (imports included):", flush=True)
    results = {"rows": args.rows, "mtrec": run_mtrec(log_dir, work / "report"),
               "mtrec_no_plots": run_mtrec(log_dir, work / "report-no-plots", "--no-plots"),
               "sklearn": timed([sys.executable, __file__, "--sklearn-worker", str(log_dir)])}
    assert results["mtrec"]["rows"] == args.rows, results["mtrec"]["rows"]
    sklearn, ours = json.loads(results["sklearn"]["stdout"]), results["mtrec"]
    print(_row("mtrec metrics (report + plots)", ours))
    print(_row("mtrec metrics --no-plots", results["mtrec_no_plots"]))
    print(_row("scikit-learn roc_auc_score + log_loss (pyarrow)", results["sklearn"]))
    for name, label in (("mtrec", "mtrec metrics"), ("mtrec_no_plots", "mtrec metrics --no-plots")):
        print(f"scikit-learn / {label}: {results['sklearn']['seconds'] / results[name]['seconds']:.1f}x wall, "
              f"{results['sklearn']['cpu_seconds'] / results[name]['cpu_seconds']:.1f}x CPU")
    auc_diff = max(abs(ours["metrics"][t]["auc"] - sklearn[t]["auc"]) for t in TASKS)
    bound = max(ours["metrics"][t]["auc_error_bound"] for t in TASKS)
    ll_diff = max(abs(ours["metrics"][t]["logloss"] - sklearn[t]["logloss"]) for t in TASKS)
    print(f"max |AUC mtrec - sklearn| = {auc_diff:.2e} (reported bound {bound:.2e}); "
          f"max |logloss diff| = {ll_diff:.1e}")
    results["agreement"] = {"max_auc_diff": auc_diff, "max_auc_bound": bound, "max_logloss_diff": ll_diff}

    startup = [run_mtrec(small_dir, work / "report-startup", "--no-plots") for _ in range(STARTUP_REPEATS)]
    imports = [timed([sys.executable, "-c", "import torch.distributed, matplotlib.figure"])
               for _ in range(STARTUP_REPEATS)]
    results["startup"] = {name: {key: statistics.median(r[key] for r in runs)
                                 for key in ("seconds", "cpu_seconds", "peak_rss_mb")}
                          for name, runs in (("mtrec_no_plots", startup), ("torch_matplotlib_imports", imports))}
    print(f"start-up, median of {STARTUP_REPEATS}:")
    print(_row(f"mtrec metrics --no-plots, {STARTUP_ROWS:,} rows", results["startup"]["mtrec_no_plots"]))
    print(_row("python -c 'import torch.distributed, matplotlib'", results["startup"]["torch_matplotlib_imports"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
