"""Training throughput: the full pipeline (Parquet loader, sharded EBC, TrainPipelineSparseDist)
at 1 and 2 processes against a plain-PyTorch loop of the same model (nn.EmbeddingBag, in-memory
tensors, no TorchRec), measured side by side in one run. Not a test.

    .venv/bin/python benchmarks/train_throughput.py --config configs/census_adatt.yaml --steps 150

Rounds are interleaved (plain, pipeline x1, pipeline x2, plain, ...) so that load from other
processes hits every variant alike; each figure is the median over rounds of the examples/s after
the first `--warmup` steps (the trainer's own metrics.jsonl windows, so start-up, planning and
checkpoint time are excluded for both). The loader's rows/s for the same batches is measured in the
same run, for the "loader must never limit training" ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain_loop(config: str, data: str, steps: int, warmup: int, batch_size: int) -> float:
    """examples/s of the same backbone/towers/loss with nn.EmbeddingBag tables over in-memory tensors."""
    import pyarrow.parquet as pq
    import torch

    from models.batch import MultiTaskBatch
    from models.factory import build_model
    from pipeline.config import load_job_config
    from pipeline.data.schema import DatasetSchema

    torch.manual_seed(0)
    schema = DatasetSchema.load(data)
    inputs = schema.input_spec()
    table = pq.read_table(schema.split_paths("train"), columns=schema.columns(with_keys=False))
    ids = torch.stack([torch.from_numpy(table[s.column].to_numpy().astype("int64")) for s in schema.sparse], 1)
    dense = torch.stack([torch.from_numpy(table[d.column].to_numpy().astype("float32")) for d in schema.dense], 1)
    labels = torch.stack([torch.from_numpy(table[t.label].to_numpy().astype("float32")) for t in schema.tasks], 1)

    class PlainSparseArch(torch.nn.Module):
        """One nn.EmbeddingBag per feature over an [B, F] id tensor (one id per row and feature)."""

        def __init__(self) -> None:
            super().__init__()
            self.bags = torch.nn.ModuleList(torch.nn.EmbeddingBag(f.num_embeddings, f.embedding_dim, mode="sum")
                                            for f in inputs.sparse_features)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.cat([bag(ids[:, i:i + 1]) for i, bag in enumerate(self.bags)], dim=1)

    model = build_model(load_job_config(config).model, inputs, ebc_device="cpu")
    model.sparse_arch = PlainSparseArch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = ids.shape[0]
    ones_m, ones_w = torch.ones(batch_size, len(inputs.tasks)), torch.ones(batch_size)
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        lo = (step * batch_size) % (n - batch_size)
        batch = MultiTaskBatch(dense=dense[lo:lo + batch_size], sparse_features=ids[lo:lo + batch_size],
                               labels=labels[lo:lo + batch_size], masks=ones_m, weights=ones_w)
        opt.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        opt.step()
    return (steps - warmup) * batch_size / (time.perf_counter() - start)


def pipeline_run(config: str, data: str, steps: int, warmup: int, nproc: int, batch_size: int) -> float:
    """examples/s (all ranks) of `mtrec train`, median of its metrics.jsonl windows after warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = ["-m", "pipeline", "train", "--config", config, "--data", data, "--out", str(run), "--no-resume",
                "--max-steps", str(steps), f"train.batch_size={batch_size}", "train.log_every_steps=10",
                "train.validation_max_batches=1", "train.early_stopping.task=null"]
        launcher = [sys.executable] if nproc == 1 else [str(Path(sys.executable).with_name("torchrun")),
                                                        "--standalone", f"--nproc_per_node={nproc}"]
        subprocess.run(launcher + args, cwd=REPO, check=True, capture_output=True)
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rates = [e["examples_per_s"] for e in events if e["kind"] == "train" and e["step"] > warmup]
        return statistics.median(rates)


def loader_rate(data: str, batch_size: int, batches: int) -> float:
    from pipeline.data.reader import ParquetBatchStream, make_loader
    from pipeline.data.schema import DatasetSchema

    schema = DatasetSchema.load(data)
    stream = ParquetBatchStream(schema, schema.split_paths("train"), batch_size, num_workers=1, shuffle=True,
                                with_keys=False)
    start, rows = time.perf_counter(), 0
    for i, batch in enumerate(make_loader(stream, 1)):
        rows += batch.batch_size
        if i + 1 == batches:
            break
    return rows / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/census_adatt.yaml")
    p.add_argument("--data", default="runs/data/census")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if not (Path(args.data) / "schema.yaml").exists():
        subprocess.run([sys.executable, "-m", "pipeline", "prepare", "census", "--out", args.data], check=True)
    results: dict[str, list[float]] = {"plain PyTorch, 1 process": [], "mtrec, 1 process": [],
                                       "mtrec, 2 processes (torchrun)": [], "loader alone (1 worker)": []}
    for _ in range(args.rounds):
        results["plain PyTorch, 1 process"].append(plain_loop(args.config, args.data, args.steps, args.warmup,
                                                              args.batch_size))
        results["mtrec, 1 process"].append(pipeline_run(args.config, args.data, args.steps, args.warmup, 1,
                                                        args.batch_size))
        results["mtrec, 2 processes (torchrun)"].append(pipeline_run(args.config, args.data, args.steps,
                                                                     args.warmup, 2, args.batch_size))
        results["loader alone (1 worker)"].append(loader_rate(args.data, args.batch_size, args.steps))
    medians = {k: statistics.median(v) for k, v in results.items()}
    base = medians["plain PyTorch, 1 process"]
    train_1 = medians["mtrec, 1 process"]
    lines = [f"config {args.config}, batch {args.batch_size} per rank, {args.steps} steps "
             f"({args.warmup} warm-up), {args.rounds} interleaved rounds", "",
             "| variant | examples/s (median) | vs plain |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:,.0f} | {v / base:.2f}x |" for k, v in medians.items()]
    lines += ["", f"loader rows/s / training rows/s (1 process): {medians['loader alone (1 worker)'] / train_1:.1f}x"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
