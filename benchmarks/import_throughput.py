"""Import throughput of `mtrec prepare table`: rows/s and peak RSS of the whole process tree. Not a test.

    .venv/bin/python benchmarks/import_throughput.py                     # 1M and 10M rows
    .venv/bin/python benchmarks/import_throughput.py --rows 1000000      # while developing

A Criteo-like CSV is generated in chunks under --work (reused when it exists with the same row
count): a 0/1 label, 13 integer counters I1..I13 (log-normal, so skewed, 20% null) and 26 string
ids C1..C26 (8 hex characters; ranks from a Zipf law over 10 ... 1M distinct values per column,
5% null). The spec imports every counter with a train-mean fill + log1p + z-score, C1..C13 through
vocabularies fitted on train (min_count 5) and C14..C26 hashed into 2^20 buckets, with a 5% / 5%
hash split. The import runs as `python -m pipeline prepare table` in a child process whose
process-tree RSS (sum over it and its descendants, from /proc) is sampled every 0.1 s. Prints a
Markdown table (the one in docs/BENCHMARKS.md) and optionally writes --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import yaml

REPO = Path(__file__).resolve().parents[1]
DENSE, SPARSE = 13, 26
CHUNK_ROWS = 500_000


def hex_ids(values: np.ndarray) -> pa.Array:
    """uint32 [n] -> 8-character lower-case hex strings, built from buffers (no per-row Python)."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    nibbles = (values[:, None] >> np.arange(28, -4, -4, dtype=np.uint32)) & 0xF
    data = digits[nibbles].reshape(-1)
    offsets = np.arange(0, 8 * (len(values) + 1), 8, dtype=np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


def chunk(rng: np.random.Generator, rows: int) -> pa.Table:
    columns = {"label": pa.array(rng.random(rows) < 0.25, pa.int8())}
    for i in range(DENSE):
        counts = np.floor(rng.lognormal(1.0 + 0.2 * i, 1.5, rows)).astype(np.int64)
        columns[f"I{i + 1}"] = pa.array(counts, mask=rng.random(rows) < 0.2)
    for j in range(SPARSE):
        cardinality = int(10 ** (1 + 5 * j / (SPARSE - 1)))  # 10 ... 1M
        ranks = np.minimum(rng.zipf(1.2, rows), cardinality).astype(np.uint32)
        ids = hex_ids(ranks * np.uint32(2654435761) + np.uint32(j))  # scattered, column-specific
        columns[f"C{j + 1}"] = pc.if_else(pa.array(rng.random(rows) < 0.05), pa.scalar(None, pa.string()), ids)
    return pa.table(columns)


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """The benchmark CSV, chunk by chunk (memory ~ one chunk), atomically."""
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(seed)
    with pa_csv.CSVWriter(tmp, chunk(np.random.default_rng(seed), 1).schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            writer.write_table(chunk(rng, min(CHUNK_ROWS, rows - start)))
    os.replace(tmp, path)


def spec(csv: Path) -> dict:
    return {
        "name": "criteo-like",
        "inputs": {"files": [str(csv)]},
        "splits": {"method": "hash", "fractions": {"valid": 0.05, "test": 0.05}},
        "dense": [{"name": f"I{i + 1}", "fill": "mean", "transform": ["log1p", "zscore"]} for i in range(DENSE)],
        "categorical": [{"name": f"C{j + 1}", "encoding": "vocab", "min_count": 5} if j < SPARSE // 2
                        else {"name": f"C{j + 1}", "encoding": "hash", "buckets": 1 << 20} for j in range(SPARSE)],
        "tasks": [{"name": "click", "label": {"column": "label"}}],
        "row_group_rows": 8192,
    }


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (from /proc; 0 for vanished processes)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def run_import(spec_path: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "prepare", "table", "--spec", str(spec_path), "--out", str(out)]
    start, before = time.perf_counter(), os.times()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"import failed ({proc.returncode}):\n{stderr[-3000:]}")
    after = os.times()
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(peak / 2**20), "cpu_s": round(cpu, 1),
            "summary": stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", default="/tmp/mtrec_import_bench", help="where the CSV and datasets go")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        csv = work / f"criteo_like_{rows}.csv"
        t0 = time.perf_counter()
        write_csv(csv, rows)
        spec_path = work / f"spec_{rows}.yaml"
        spec_path.write_text(yaml.safe_dump(spec(csv), sort_keys=False))
        result = run_import(spec_path, work / f"dataset_{rows}")
        result.update(rows=rows, csv_mib=round(csv.stat().st_size / 2**20), rows_per_s=round(rows / result["seconds"]),
                      generate_s=round(time.perf_counter() - t0 - result["seconds"], 1))
        print(result.pop("summary"), file=sys.stderr)
        results.append(result)
        print(json.dumps(result), file=sys.stderr)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, pyarrow {pa.__version__}")
    print("| rows | CSV | wall s | rows/s | CPU s | peak RSS (process tree) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']:,} | {r['csv_mib']:,} MiB | {r['seconds']} | {r['rows_per_s']:,} | {r['cpu_s']} | "
              f"{r['peak_rss_mib']:,} MiB |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
