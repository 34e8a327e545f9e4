"""Test helper (run as a plain process or under torchrun): restore RUN's latest checkpoint into a
fresh Trainer on this job's world size and compare every model and optimizer tensor, shard by shard,
with the values in the checkpoint files. Prints one JSON line on rank 0.

    python tests/train/checkpoint_probe.py RUN CONFIG DATA
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from pipeline.config import load_job_config
from pipeline.data.schema import DatasetSchema
from pipeline.runtime.checkpoint import complete_checkpoints
from pipeline.runtime.distributed import init_distributed, shutdown_distributed
from pipeline.train.trainer import Trainer


def flatten(state: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, torch.Tensor) or hasattr(value, "local_shards"):
            out[name] = value
    return out


def max_diff(value, full: torch.Tensor) -> float:
    """|loaded - saved| over this rank's part of a (sharded) tensor."""
    if hasattr(value, "local_shards"):
        worst = 0.0
        for shard in value.local_shards():
            region = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
            worst = max(worst, float((shard.tensor.float() - full[region].float()).abs().max()))
        return worst
    return float((value.float() - full.float()).abs().max()) if value.numel() else 0.0


def main() -> None:
    run, config, data = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    checkpoint = complete_checkpoints(run)[-1]
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(checkpoint), f"{tmp}/full.pt")
        saved = flatten(torch.load(f"{tmp}/full.pt", weights_only=False))  # our own test file
    cfg = load_job_config(config, ["train.max_steps=1000"])
    ctx = init_distributed()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            scratch_run = Path(scratch) / "run"
            scratch_run.mkdir()
            (scratch_run / "checkpoints").symlink_to(run / "checkpoints")
            trainer = Trainer(cfg, DatasetSchema.load(data), scratch_run, ctx)
            trainer._restore(resume=True, require_checkpoint=True, init_from=None)
            loaded = {**flatten(trainer.model.state_dict(), "model."), **flatten(trainer.optimizer.state_dict(), "optim.")}
            diffs = {k: max_diff(v, saved[k]) for k, v in loaded.items()}
    finally:
        shutdown_distributed()
    if ctx.is_main:
        print(json.dumps({"checked": len(diffs), "max_abs_diff": max(diffs.values()),
                          "optimizer_tensors": sum(k.startswith("optim.") for k in diffs),
                          "worst": max(diffs, key=diffs.get)}))


if __name__ == "__main__":
    main()
