"""Forward+backward throughput of every backbone at the census settings, on CPU.

Usage: .venv/bin/python benchmarks/backbone_throughput.py [--batch-sizes 512 4096] [--repeats 7]
       [--steps 10] [--threads N] [--clock wall|process]

Backbone only (input x [B, D] with D = 33 sparse x 8 + 7 dense = 271, T = 3 tasks): one step is
forward, mean of the squared output, backward. The backbones are timed side by side: every repeat
runs each backbone in turn (interleaved), and the table reports medians over repeats, so slow drift
of the machine hits every backbone alike. `--clock process` times CPU seconds of this process
instead of wall seconds: with `--threads 1` that is robust to other jobs sharing the cores.
Results go to the log (stderr) as a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time

import torch

from models.config import BackboneConfig
from models.factory import build_backbone

log = logging.getLogger("backbone_throughput")

CENSUS_INPUT_DIM = 33 * 8 + 7
CENSUS_TASKS = 3
# The shipped census configs (configs/census_*.yaml); all gated backbones have 6 experts per level.
SETTINGS: dict[str, BackboneConfig] = {
    "shared_bottom [128,64]": BackboneConfig("shared_bottom", ((128,), (64,))),
    "mmoe n=6 [[128,64]]": BackboneConfig("mmoe", ((128, 64),), num_experts=6),
    "ml_mmoe n=6 [[128],[64]]": BackboneConfig("ml_mmoe", ((128,), (64,)), num_experts=6),
    "cgc m=1 m_s=3 [[128,64]]": BackboneConfig("cgc", ((128, 64),), num_task_experts=1, num_shared_experts=3),
    "ple m=1 m_s=3 [[128],[64]]": BackboneConfig("ple", ((128,), (64,)), num_task_experts=1, num_shared_experts=3),
    "cross_stitch [[128],[64]]": BackboneConfig("cross_stitch", ((128,), (64,))),
    "adatt_sp m=2 [[128],[64]]": BackboneConfig("adatt_sp", ((128,), (64,)), num_task_experts=2),
    "adatt_general m=1 m_s=3 [[128],[64]]": BackboneConfig("adatt_general", ((128,), (64,)), num_task_experts=1,
                                                           num_shared_experts=3),
}
ADATT, MMOE, ML_MMOE = "adatt_sp m=2 [[128],[64]]", "mmoe n=6 [[128,64]]", "ml_mmoe n=6 [[128],[64]]"


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def step_seconds(model: torch.nn.Module, x: torch.Tensor, steps: int, clock=time.perf_counter) -> float:
    """Mean time of one forward+backward step over `steps` steps."""
    start = clock()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model(x).hidden.square().mean().backward()
    return (clock() - start) / steps


def measure(batch_size: int, repeats: int, steps: int, clock) -> dict[str, list[float]]:
    torch.manual_seed(0)
    models = {name: build_backbone(cfg, CENSUS_INPUT_DIM, CENSUS_TASKS) for name, cfg in SETTINGS.items()}
    x = torch.randn(batch_size, CENSUS_INPUT_DIM)
    for model in models.values():  # warm-up
        step_seconds(model, x, 2)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(step_seconds(model, x, steps, clock))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; torchrun gives each rank 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("torch %s, %d threads, %s clock, %s, %d logical CPUs", torch.__version__, torch.get_num_threads(),
             args.clock, platform.machine(), os.cpu_count())
    params = {name: sum(p.numel() for p in build_backbone(cfg, CENSUS_INPUT_DIM, CENSUS_TASKS).parameters())
              for name, cfg in SETTINGS.items()}
    for batch_size in args.batch_sizes:
        times = measure(batch_size, args.repeats, args.steps, CLOCKS[args.clock])
        medians = {name: statistics.median(t) for name, t in times.items()}
        log.info("\nbatch %d (median of %d repeats x %d steps)\n", batch_size, args.repeats, args.steps)
        log.info("| backbone | parameters | ms/step | examples/s | vs MMoE n=6 |")
        log.info("|---|---:|---:|---:|---:|")
        for name, median in medians.items():
            log.info("| %s | %d | %.2f | %.0f | %.2fx |", name, params[name], median * 1e3, batch_size / median,
                     median / medians[MMOE])
        log.info("\nAdaTT-sp step cost at 6 experts per level: %.2fx MMoE, %.2fx ML-MMoE", medians[ADATT] / medians[MMOE],
                 medians[ADATT] / medians[ML_MMOE])


if __name__ == "__main__":
    main()
