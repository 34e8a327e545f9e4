"""The scale run: the criteo-like preset end to end on this machine. Not a test.

    .venv/bin/python benchmarks/scale.py --work /tmp/scale_bench --train-rows 2000000 --score-rows 2000000 \
        --json /tmp/scale_bench/results.json

Stages (`--stages`, default all, in this order):
  gen       `mtrec prepare synthetic --preset criteo-like` for the training set (train split =
            --train-rows) and, with another seed, the scoring set (--score-rows rows in all splits)
  train     `torchrun --nproc_per_node=2 -m pipeline train` with configs/synthetic_criteo_like.yaml,
            one epoch, checkpoints every --checkpoint-every steps
  score     `mtrec evaluate` of the trained run over the scoring set with 1 and with 2 processes, for
            each --score-repeats (the set's files linked that many times); runs already in --json are kept
  plain     the same model in a plain-PyTorch loop (1 process: nn.EmbeddingBag with sparse
            gradients, torch Adagrad + Adam, the same loader) next to `mtrec train` on 1 process,
            both for --plain-steps steps, over a dataset whose tables are capped at
            --plain-table-rows rows (so that the plain model fits one process)
  precision fp32 vs bf16 autocast on census (configs/census_adatt.yaml, 1 process, its recipe for
            --census-epochs epochs) and fp32 / bf16 / fp16 tables on the plain stage's data (1 process)
Every command runs in its own process tree; peak RSS is each process's VmHWM (sampled from /proc
every 0.2 s, so a process living < 0.2 s may be missed), CPU seconds are the tree's.
Timings of phases inside a job come from its logs (train.log / stderr timestamps, metrics.jsonl).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = REPO / "configs" / "synthetic_criteo_like.yaml"
_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[rank(\d+)\] \w+ ([\w.]+): (.*)$")


# ----------------------------------------------------------------------------- process measurement
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _tree(pid: int) -> list[tuple[int, int]]:
    """(pid, depth below `pid`) of the process tree."""
    out, frontier, depth = [(pid, 0)], [pid], 0
    while frontier:
        depth += 1
        frontier = [c for p in frontier for c in _children(p)]
        out += [(c, depth) for c in frontier]
    return out


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmHWM, Pss) of a process in KiB: its peak resident set, and its current proportional share
    (pages shared with a forked parent counted once across the sharers)."""
    try:
        hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        pss = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
    except OSError:
        return None
    return (int(hwm.group(1)), int(pss.group(1))) if hwm and pss else None


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` (stdout+stderr to `log`); wall s, CPU s of the tree, peak RSS (MiB) of each of the
    job's processes (ranks) and of their DataLoader workers, and the peak of the tree's summed PSS
    (the job's real footprint: forked workers share their parent's pages)."""
    peaks: dict[int, int] = {}
    depths: dict[int, int] = {}
    total_pss = [0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})

        def sample() -> None:
            while proc.poll() is None:
                pss = 0
                for pid, depth in _tree(proc.pid):
                    depths[pid] = depth
                    got = _memory_kib(pid)
                    if got:
                        peaks[pid] = max(peaks.get(pid, 0), got[0])
                        pss += got[1]
                total_pss[0] = max(total_pss[0], pss)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        sampler.join()
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}; see {log}")
    # the job's own processes: the command itself, or torchrun's ranks; deeper ones are DataLoader workers
    rank_depth = 1 if "torchrun" in cmd[0] else 0
    mib = {pid: round(kib / 1024) for pid, kib in peaks.items()}
    return {"cmd": " ".join(cmd), "start": start, "wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mib": sorted((v for pid, v in mib.items() if depths[pid] == rank_depth), reverse=True),
            "peak_rss_mib_loader_workers": sorted((v for pid, v in mib.items() if depths[pid] > rank_depth),
                                                  reverse=True),
            "peak_total_pss_mib": round(total_pss[0] / 1024)}


def log_times(text: str, pattern: str) -> list[float]:
    """Epoch seconds of the log lines whose message matches `pattern`."""
    out = []
    for line in text.splitlines():
        m = _TS.match(line)
        if m and re.search(pattern, m.group(4)):
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def du_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def mtrec(*args: str, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "pipeline", *args]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "pipeline", *args]


# ----------------------------------------------------------------------------- stages
def gen(out: Path, rows: int, seed: int, work: Path, *extra: str) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    r = run(mtrec("prepare", "synthetic", "--preset", "criteo-like", "--rows", str(rows), "--seed", str(seed),
                  "--out", str(out), *extra), work / f"gen_{out.name}.log")
    oracle = __import__("yaml").safe_load((out / "schema.yaml").read_text())["prep"]["oracle"]
    return {**r, "rows": rows, "rows_per_s": rows / r["wall_s"], "rows_per_cpu_s": rows / r["cpu_s"],
            "disk_gb": du_gb(out), "bytes_per_row": du_gb(out) * 1e9 / rows, "oracle_test": oracle}


def train(data: Path, run_dir: Path, work: Path, nproc: int, overrides: list[str],
          config: Path = CONFIG) -> dict[str, Any]:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    r = run(mtrec("train", "--config", str(config), "--data", str(data), "--out", str(run_dir), *overrides,
                  nproc=nproc), work / f"{run_dir.name}.log")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["kind"] == "train"]
    rates = [x["examples_per_s"] for x in steps[1:]] or [steps[0]["examples_per_s"]]
    train_log = (run_dir / "train.log").read_text()
    written = log_times(train_log, r"^checkpoint written: .*step_(\d+)")
    step_time = {x["step"]: x["time"] for x in steps}
    writes = []
    for line in train_log.splitlines():
        m = re.search(r"checkpoint written: .*step_(\d+)", line)
        if m and int(m.group(1)) in step_time:
            writes.append(log_times(line, "checkpoint written")[0] - step_time[int(m.group(1))])
    summary = json.loads((run_dir / "summary.json").read_text())
    latest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    plan = (run_dir / "plan.txt").read_text()
    started = log_times(train_log, r"^process group")[0]
    planned = log_times(train_log, r"^plan: ")[0]
    return {**r, "steps": summary["steps"], "examples_per_s_median": statistics.median(rates),
            "examples_per_s_end_to_end": summary["steps"] * nproc * _batch(overrides, config) / r["wall_s"],
            "launch_to_process_group_s": started - r["start"], "process_group_to_plan_s": planned - started,
            "plan_to_first_log_s": steps[0]["time"] - planned, "first_log_step": steps[0]["step"],
            "first_log_step_s": steps[0]["step"] * nproc * _batch(overrides, config) / steps[0]["examples_per_s"],
            "launch_to_first_step_s": steps[0]["time"] - r["start"]
            - steps[0]["step"] * nproc * _batch(overrides, config) / steps[0]["examples_per_s"],
            "checkpoint_write_s": writes, "checkpoints_written": len(written), "checkpoint_gb": du_gb(latest),
            "plan_summary": next(x for x in plan.splitlines() if x.startswith("plan: ")),
            "rank_table_bytes": next(x for x in plan.splitlines() if x.startswith("per-rank table bytes")),
            "validation": summary["validation"]}


def _batch(overrides: list[str], config: Path = CONFIG) -> int:
    for o in overrides:
        if o.startswith("train.batch_size="):
            return int(o.split("=")[1])
    from pipeline.config import load_job_config
    return load_job_config(config).train.batch_size


def score(run_dir: Path, data_glob: str, out: Path, work: Path, nproc: int, rows: int,
          overrides: list[str]) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    r = run(mtrec("evaluate", "--config", str(CONFIG), "--checkpoint", str(run_dir), "--data", data_glob,
                  "--out", str(out), *overrides, nproc=nproc), work / f"{out.name}.log")
    text = (work / f"{out.name}.log").read_text()
    loaded = log_times(text, r"^loaded checkpoint")
    started = log_times(text, r"^process group")
    report = json.loads((out / "report.json").read_text())
    written = (out / "report.json").stat().st_mtime  # the report is the job's last write
    scoring_s = (written - loaded[0]) if loaded else None
    return {**r, "rows": report["rows"], "rows_per_s_end_to_end": report["rows"] / r["wall_s"],
            "rows_per_s_scoring": report["rows"] / scoring_s if scoring_s else None, "scoring_s": scoring_s,
            "start_to_loaded_s": (loaded[0] - started[0]) if loaded and started else None,
            "tasks": {t: {k: m.get(k) for k in ("auc", "ne", "logloss", "mse")} for t, m in report["tasks"].items()}}


def repeated(dataset: Path, times: int, work: Path) -> str:
    """A glob over `times` links to every Parquet file of `dataset` (with its schema.yaml next to
    them): a scoring log `times` as long without writing it `times` over."""
    if times == 1:
        return str(dataset / "*" / "*.parquet")
    root = work / f"{dataset.name}_x{times}"
    if root.exists():
        shutil.rmtree(root)
    for k in range(times):
        for f in sorted(dataset.glob("*/*.parquet")):
            link = root / f"r{k:03d}" / f"{f.parent.name}_{f.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
    shutil.copy(dataset / "schema.yaml", root / "schema.yaml")
    return str(root / "*" / "*.parquet")


def plain_loop(config: Path, data: Path, steps: int, batch_size: int) -> dict[str, Any]:
    """examples/s of the same model trained by a plain PyTorch loop (runs in a child process)."""
    import torch

    from models.factory import build_model
    from pipeline.config import load_job_config
    from pipeline.data.reader import ParquetBatchStream, make_loader
    from pipeline.data.schema import DatasetSchema

    torch.manual_seed(0)
    schema = DatasetSchema.load(data)
    model = build_model(load_job_config(config).model, schema.input_spec(), ebc_device="cpu")
    bags = list(model.sparse_arch.ebc.embedding_bags.values())
    for bag in bags:
        bag.sparse = True  # sparse gradients: only the looked-up rows, as the fused kernels
    emb = [p for bag in bags for p in bag.parameters()]
    emb_ids = {id(p) for p in emb}
    dense = [p for p in model.parameters() if id(p) not in emb_ids]
    sparse_opt, dense_opt = torch.optim.Adagrad(emb, lr=0.05), torch.optim.Adam(dense, lr=1e-3)
    stream = ParquetBatchStream(schema, schema.split_paths("train"), batch_size, num_workers=1, shuffle=True,
                                with_keys=False)
    times = []
    for i, batch in enumerate(make_loader(stream, 1)):
        if i == steps:
            break
        start = time.perf_counter()
        loss, _ = model(batch)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        times.append(time.perf_counter() - start)
    warm = times[len(times) // 5:]
    return {"steps": len(times), "examples_per_s_median": batch_size / statistics.median(warm)}


def precision(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """fp32 vs bf16 autocast (and fp16 tables) on census (the shipped AdaTT config, its full recipe,
    1 process) and on the criteo-like plain-loop data (1 process, --plain-steps steps)."""
    out: dict[str, Any] = {}
    census = work / "census"
    if args.census_epochs and not (census / "schema.yaml").is_file():
        run(mtrec("prepare", "census", "--out", str(census)), work / "gen_census.log")
    census_config = REPO / "configs" / "census_adatt.yaml"
    epochs = [f"train.epochs={args.census_epochs}"]
    for name, extra in (("fp32", []), ("bf16", ["train.precision=bf16"])) if args.census_epochs else ():
        out[f"census_{name}"] = train(census, work / f"census_{name}", work, 1, epochs + extra, config=census_config)
    plain_data = work / "plain_data"
    steps = [f"train.max_steps={args.plain_steps}", "train.checkpoint_every_steps=null",
             "train.validate_every_steps=null", "train.validation_max_batches=5", "train.log_every_steps=10"]
    for name, extra in (("fp32", []), ("bf16", ["train.precision=bf16"]), ("fp16_tables", ["model.embedding.data_type=fp16"])):
        out[f"criteo_{name}"] = train(plain_data, work / f"criteo_{name}", work, 1, steps + extra + args.train_overrides)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--train-rows", type=int, default=2_000_000)
    p.add_argument("--score-rows", type=int, default=2_000_000)
    p.add_argument("--score-repeats", default="1",
                   help="score the scoring set's files linked this many times (comma list, e.g. 1,10), "
                        "each with 1 and with 2 processes")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--plain-steps", type=int, default=60)
    p.add_argument("--census-epochs", type=int, default=8, help="precision stage: census epochs (the recipe's 8; 0 = skip census)")
    p.add_argument("--plain-table-rows", type=int, default=1_000_000)
    p.add_argument("--stages", default="gen,train,score,plain,precision")
    p.add_argument("--train-overrides", nargs="*", default=[])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plain-worker", nargs=3, metavar=("DATA", "STEPS", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_worker:
        data, steps, batch = args.plain_worker
        print(json.dumps(plain_loop(CONFIG, Path(data), int(steps), int(batch))))
        return
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    train_data, score_data = work / "train_data", work / "score_data"
    valid_test = 0.1  # the preset's valid + test fractions
    if "gen" in stages:
        results["gen_train"] = gen(train_data, math.ceil(args.train_rows / (1 - valid_test)), 0, work)
        results["gen_score"] = gen(score_data, args.score_rows, 0, work, "--sample", "1")  # same model, other rows
    # a train line exactly at each checkpoint step: the checkpoint's write time is the gap to its log line
    overrides = [f"train.checkpoint_every_steps={args.checkpoint_every}", "train.validate_every_steps=null",
                 f"train.log_every_steps={args.checkpoint_every}", *args.train_overrides]
    if "train" in stages:
        results["train_2"] = train(train_data, work / "run2", work, 2, overrides)
    if "score" in stages:  # a score run already in --json is kept (the 100M-row ones take ~20 min each)
        for repeat in (int(r) for r in args.score_repeats.split(",")):
            data_glob = repeated(score_data, repeat, work)
            for nproc in (1, 2):
                key = f"score_{nproc}_x{repeat}"
                if key in results and results[key]["rows"] == args.score_rows * repeat:
                    continue
                budget = ["sharding.per_rank_memory_gb=null"] if nproc == 1 else []  # one process: the whole machine
                results[key] = score(work / "run2", data_glob, work / f"eval{nproc}_x{repeat}", work, nproc,
                                     args.score_rows * repeat, budget)
                if args.json:  # saved after each run, so that an interrupted stage resumes
                    args.json.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
            one, two = results[f"score_1_x{repeat}"]["tasks"], results[f"score_2_x{repeat}"]["tasks"]
            results[f"score_max_abs_diff_1_vs_2_x{repeat}"] = max(
                abs(a - b) for task, m1 in one.items() for metric, a in m1.items()
                if a is not None and (b := two[task][metric]) is not None)
    if "plain" in stages:
        plain_data = work / "plain_data"
        rows = max(200_000, 4096 * args.plain_steps * 2)
        results["gen_plain"] = gen(plain_data, rows, 2, work, "--max-table-rows", str(args.plain_table_rows))
        batch = _batch(args.train_overrides)
        r = run([sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--plain-worker",
                 str(plain_data), str(args.plain_steps), str(batch)], work / "plain.log")
        results["plain_1"] = {**r, **json.loads((work / "plain.log").read_text().strip().splitlines()[-1])}
        results["mtrec_1_same_data"] = train(plain_data, work / "run1_plain", work, 1,
                                             [f"train.max_steps={args.plain_steps}", "train.checkpoint_every_steps=null",
                                              "train.validate_every_steps=null", "train.validation_max_batches=1",
                                              "train.log_every_steps=10", *args.train_overrides])
    if "precision" in stages:
        results.update(precision(work, args))
    text = json.dumps(results, indent=2, sort_keys=True, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
