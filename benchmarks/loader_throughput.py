"""Loader throughput: rows/s from Parquet to ready MultiTaskBatch, and peak memory. Not a test.

    .venv/bin/python benchmarks/loader_throughput.py                        # census + 10M-row synthetic
    .venv/bin/python benchmarks/loader_throughput.py --rows 2000000 --workers 0,1,2

Datasets are prepared under --work (reused when they exist with the same parameters; the synthetic
write is timed). Every (dataset, workers) measurement runs in a fresh process so that its peak RSS
is its own; it reads one training epoch of the train split (shuffle on, default buffer and
read-ahead) or --max-rows rows. rows/s counts from the creation of the loader, so worker start-up
is included; CPU seconds (the process and its DataLoader workers) are reported too, as rows per
CPU-second is less sensitive to other load on a shared machine. Prints a Markdown table (the one in
docs/BENCHMARKS.md) and optionally writes --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(dataset: str, workers: int, batch_size: int, max_rows: int) -> dict:
    """One epoch (or max_rows rows) through make_loader; runs in its own process."""
    import torch

    from pipeline.data.reader import ParquetBatchStream, make_loader
    from pipeline.data.schema import DatasetSchema

    schema = DatasetSchema.load(dataset)
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = cpu_start.ru_utime + cpu_start.ru_stime
    start = time.perf_counter()
    stream = ParquetBatchStream(schema, schema.split_paths("train"), batch_size, num_workers=workers, shuffle=True)
    rows, first_batch_s = 0, None
    for batch in make_loader(stream, workers):
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - start
        assert isinstance(batch.dense, torch.Tensor)
        rows += batch.batch_size
        if max_rows and rows >= max_rows:
            break
    seconds = time.perf_counter() - start
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime")) - cpu_start
    return {
        "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
        "cpu_s": round(cpu, 2), "rows_per_cpu_s": round(rows / cpu),
        "first_batch_s": round(first_batch_s or 0.0, 2),
        "peak_rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    }


def run_child(args: list[str]) -> tuple[str, float, int]:
    """Run `python args...`; returns (stdout, wall seconds, peak RSS MiB of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
    return out, time.perf_counter() - start, usage.ru_maxrss // 1024


def prepare(kind: str, out: Path, rows: int) -> dict:
    cmd = ["-m", "pipeline", "prepare", kind, "--out", str(out)]
    if kind == "synthetic":
        cmd += ["--rows", str(rows)]
    existed = (out / "schema.yaml").is_file()
    _, seconds, rss = run_child(cmd)
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    return {"dataset": kind, "reused": existed, "seconds": round(seconds, 1), "peak_rss_mib": rss,
            "bytes": size, "rows_per_s": None if existed else round(rows / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench"), help="where datasets are prepared")
    parser.add_argument("--rows", type=int, default=10_000_000, help="synthetic rows (0 = skip synthetic)")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-rows", type=int, default=0, help="stop each measurement after this many rows")
    parser.add_argument("--skip-census", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child mode: one measurement
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if args.measure:
        print(json.dumps(measure(args.measure, workers[0], args.batch_size, args.max_rows)))
        return

    work = Path(args.work)
    datasets = {}
    if not args.skip_census:
        datasets["census"] = (work / "census", 299_285)  # rows written (all three splits)
    if args.rows:
        datasets[f"synthetic {args.rows:,}"] = (work / f"synthetic-{args.rows}", args.rows)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "prepare": [], "loader": []}
    for name, (path, rows) in datasets.items():
        prep = prepare("census" if name == "census" else "synthetic", path, rows)
        results["prepare"].append({"name": name, **prep})
        print(f"prepare {name}: {prep}", file=sys.stderr)
        for w in workers:
            child = [__file__, "--measure", str(path), "--workers", str(w), "--batch-size", str(args.batch_size),
                     "--max-rows", str(args.max_rows)]
            out, _, _ = run_child(child)
            row = {"dataset": name, "workers": w, "batch_size": args.batch_size, **json.loads(out.splitlines()[-1])}
            results["loader"].append(row)
            print(f"loader {row}", file=sys.stderr)
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def markdown(results: dict) -> str:
    lines = [f"machine: {results['machine']}; load average at the end: {os.getloadavg()[0]:.1f}", "",
             "| dataset | workers | batch | rows | rows/s | rows/CPU-s | first batch s | peak RSS main MiB "
             "| peak RSS worker MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["loader"]:
        lines.append(f"| {r['dataset']} | {r['workers']} | {r['batch_size']} | {r['rows']:,} | {r['rows_per_s']:,} | "
                     f"{r['rows_per_cpu_s']:,} | {r['first_batch_s']} | {r['peak_rss_main_mib']} | "
                     f"{r['peak_rss_worker_mib']} |")
    lines += ["", "| prepare | reused | seconds | rows/s | Parquet MiB | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for p in results["prepare"]:
        rate = f"{p['rows_per_s']:,}" if p["rows_per_s"] else "-"
        lines.append(f"| {p['name']} | {p['reused']} | {p['seconds']} | {rate} | {p['bytes'] >> 20:,} | "
                     f"{p['peak_rss_mib']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
