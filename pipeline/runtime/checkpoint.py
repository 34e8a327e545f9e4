"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model, fused embedding optimiser
state, dense optimiser, step, data position and RNG states.

Layout: RUN/checkpoints/step_<8 digits>/ holding the DCP files, `meta.json`, `plan.txt`,
`rng_rank<r>.pt` and a `COMPLETE` marker. Writes go to `step_<n>.tmp/`; after every rank has
finished, rank 0 writes the marker and renames the directory, so a crash mid-write leaves only a
`.tmp` directory that loaders never pick up. Loading never unpickles: DCP plus
`torch.load(weights_only=True)` for the RNG tensors, JSON for the rest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn

from pipeline.runtime.atomic import fsync_dir
from pipeline.runtime.distributed import DistContext, barrier

log = logging.getLogger(__name__)

FORMAT = "mtrec-checkpoint/1"
MARKER = "COMPLETE"
_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt, foreign or incompatible with this job."""


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def model_fingerprint(model: nn.Module) -> str:
    """Hash of parameter/buffer names and global shapes: tells a foreign checkpoint apart."""
    items = []
    for name, value in sorted(model.state_dict().items()):
        size = value.size() if hasattr(value, "size") else ()
        items.append(f"{name}:{tuple(size)}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints under RUN/checkpoints, oldest first (a `.tmp` or unmarked dir is ignored)."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(_PREFIX) and not p.name.endswith(".tmp") and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest complete one of a run directory."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    found = complete_checkpoints(path)
    if found:
        return found[-1]
    if (path / "meta.json").exists() or path.name.endswith(".tmp"):
        raise CheckpointError(f"{path}: checkpoint is incomplete (no {MARKER} marker): a write was interrupted")
    raise CheckpointError(f"{path}: no complete checkpoint found (expected {MARKER} in it or in checkpoints/step_*)")


def _state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, Any]:
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    return state


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any], plan_text: str, ctx: DistContext, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root = checkpoints_root(run_dir)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a stale write from a crashed attempt
        tmp.mkdir()
    barrier()
    dcp.save(_state(model, optimizer), checkpoint_id=str(tmp))
    torch.save({"torch": torch.get_rng_state()}, tmp / f"rng_rank{ctx.rank}.pt")
    barrier()
    if ctx.is_main:
        full_meta = {"format": FORMAT, "step": step, "world_size": ctx.world_size,
                     "model_fingerprint": model_fingerprint(model), **meta}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        (tmp / "plan.txt").write_text(plan_text + "\n")
        (tmp / MARKER).write_text("")
        if final.exists():  # re-saving a step: keep the old copy complete until the new one is in place
            old = root / f"{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint written: %s", final)
    barrier()
    return final


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an mtrec checkpoint (format {meta.get('format')!r}, want {FORMAT!r})")
    return meta


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    ctx: DistContext, plan_text: Optional[str] = None) -> dict[str, Any]:
    """Collective. Restore model (+ optimiser and RNG when `optimizer` is given, i.e. resuming).

    Resuming requires the same world size and plan; model-only loading (evaluation) lets DCP
    re-shard the tables onto this job's plan.
    """
    meta = read_meta(path)
    if meta["model_fingerprint"] != model_fingerprint(model):
        raise CheckpointError(f"{path}: checkpoint was written by a different model (parameter names/shapes differ); "
                              "check --config against the run's config.yaml")
    if optimizer is not None:
        if meta["world_size"] != ctx.world_size:
            raise CheckpointError(f"{path}: written by {meta['world_size']} ranks, this job has {ctx.world_size}; "
                                  "resume with the same world size (evaluation can use any)")
        saved_plan = (path / "plan.txt").read_text().strip()
        if plan_text is not None and saved_plan != plan_text.strip():
            raise CheckpointError(f"{path}: sharding plan differs from this job's plan:\n"
                                  f"saved:\n{saved_plan}\nnow:\n{plan_text}")
    state = _state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__  # DCP nests tracebacks
        raise CheckpointError(f"{path}: could not read checkpoint data: {cause}") from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
        rng_path = path / f"rng_rank{ctx.rank}.pt"
        rng = torch.load(rng_path, weights_only=True)
        torch.set_rng_state(rng["torch"])
    log.info("loaded checkpoint %s (step %d)", path, meta["step"])
    return meta
