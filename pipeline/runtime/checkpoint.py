"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model, fused embedding optimiser
state, dense optimiser, step, data position and RNG states — portable across world sizes and plans.

Layout of RUN/checkpoints/:
- `step_<8 digits>/`: the DCP files, `meta.json`, `plan.txt`, `config.yaml` and `schema.yaml` (the
  job's resolved config and the dataset contract, so a checkpoint scores without the run directory),
  `rng_rank<r>.pt` and a `COMPLETE` marker. The last `keep_last` are kept.
- `best/`: the checkpoint with the best validation score so far (hard links to the step's files),
  replaced atomically whenever the score improves.

Writes go to `<name>.tmp/`; after every rank has finished, the ranks hash shares of the files and
rank 0 records every file's size and sha256 in meta.json, writes the marker and renames the directory, so a crash mid-write leaves only
a `.tmp` directory that loaders never pick up, and a truncated or altered file is refused on load
with its name. Loading never unpickles: DCP plus `torch.load(weights_only=True)` for the RNG
tensors, JSON/YAML for the rest.

Portability (docs/TRAINING.md "Moving checkpoints between jobs"): DCP stores every sharded tensor
with its global offsets, so model weights load onto any world size and any sharding plan. Every
tensor is accounted for on load: a missing, unexpected or reshaped key is an error naming it.
Optimiser state loads under another world size when each of its tensors keeps its global shape
(true for table-wise and data-parallel layouts; a column-wise table's row-wise Adagrad state has one
accumulator column per column shard, so a change in the number of shards is refused by name).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from pipeline.runtime.atomic import fsync_dir, swap_in
from pipeline.runtime.interrupts import interrupts_deferred
from pipeline.runtime.distributed import DistContext, barrier, gather_objects

log = logging.getLogger(__name__)

FORMAT = "mtrec-checkpoint/1"
MARKER = "COMPLETE"
BEST = "best"
LATEST = "latest"  # not a directory: `RUN/checkpoints/latest` names the newest complete step
CONFIG_FILE = "config.yaml"
_PREFIX = "step_"

Which = Literal["best", "latest"]


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt, foreign or incompatible with this job."""


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def model_fingerprint(model: nn.Module) -> str:
    """Hash of parameter/buffer names and global shapes: tells a foreign checkpoint apart."""
    return hashlib.sha256("\n".join(f"{k}:{tuple(v)}" for k, v in sorted(global_shapes(model.state_dict()).items()))
                          .encode()).hexdigest()[:16]


def global_shapes(state: dict[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Flattened `a.b.c` key -> global shape of every tensor in a (nested) state dict, the way DCP
    names them (ShardedTensor: its global size, not the local shard's)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(global_shapes(value, f"{name}."))
        elif hasattr(value, "local_shards"):  # ShardedTensor (its size() warns of the deprecation)
            out[name] = tuple(value.metadata().size)
        elif isinstance(value, torch.Tensor):
            out[name] = tuple(value.size())
    return out


def all_ranks_shapes(state: dict[str, Any], prefix: str, ctx: DistContext) -> dict[str, tuple[int, ...]]:
    """global_shapes over every rank: a fused optimiser's state dict holds only this rank's tables."""
    merged: dict[str, tuple[int, ...]] = {}
    for shapes in gather_objects(global_shapes(state, prefix), ctx):
        merged.update(shapes)
    return merged


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints under RUN/checkpoints, oldest first (`.tmp` or unmarked dirs ignored)."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(_PREFIX) and not p.name.endswith(".tmp") and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def best_checkpoint(run_dir: Path) -> Optional[Path]:
    best = checkpoints_root(run_dir) / BEST
    return best if (best / MARKER).is_file() else None


def resolve_checkpoint(path: str | Path, which: Which = "best") -> Path:
    """A checkpoint directory; `RUN/checkpoints/latest`; or, for a run directory, its best checkpoint
    (`which="best"`, falling back to the latest when validation never ran) or its latest one."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    if path.name == LATEST and path.parent.name == "checkpoints":
        path, which = path.parent.parent, "latest"
    found = complete_checkpoints(path)
    best = best_checkpoint(path) if which == "best" else None
    if best is not None:
        return best
    if found:
        return found[-1]
    if (path / "meta.json").exists() or path.name.endswith(".tmp"):
        raise CheckpointError(f"{path}: checkpoint is incomplete (no {MARKER} marker): a write was interrupted")
    raise CheckpointError(f"{path}: no complete checkpoint found (expected {MARKER} in it or in checkpoints/step_*)")


def run_dir_of(checkpoint: Path) -> Path:
    """RUN for RUN/checkpoints/<name>."""
    return checkpoint.parents[1]


def _state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, Any]:
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    return state


def _digest(f: Path) -> dict[str, Any]:
    try:
        with open(f, "rb") as fh:
            return {"bytes": f.stat().st_size, "sha256": hashlib.file_digest(fh, "sha256").hexdigest()}
    except OSError as e:
        return {"bytes": -1, "sha256": None, "error": str(e)}


def _file_digests(directory: Path, ctx: DistContext) -> dict[str, dict[str, Any]]:
    """Collective: name -> {bytes, sha256} of every file in `directory`. Hashing a few GB takes
    tens of seconds, so the ranks split the files (largest first, dealt round-robin) and gather the
    digests: the time stays that of one rank's share, whatever the world size."""
    files = sorted((p for p in directory.iterdir() if p.is_file()), key=lambda p: (-p.stat().st_size, p.name))
    mine = {f.name: _digest(f) for f in files[ctx.rank::ctx.world_size]}
    return dict(sorted((name, d) for part in gather_objects(mine, ctx) for name, d in part.items()))


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any], plan_text: str, run_files: dict[str, str], ctx: DistContext,
                    keep_last: int, best: bool = False) -> Path:
    """Collective: every rank calls it. `run_files` (name -> text, e.g. config.yaml, schema.yaml) are
    stored with the checkpoint. `best` also makes it RUN/checkpoints/best. Returns the step directory.
    A Ctrl-C during the write takes effect once the checkpoint is complete (runtime/interrupts.py)."""
    with interrupts_deferred(f"the checkpoint of step {step}"):
        return _write_checkpoint(run_dir, step, model, optimizer, meta, plan_text, run_files, ctx, keep_last, best)


def _write_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                      meta: dict[str, Any], plan_text: str, run_files: dict[str, str], ctx: DistContext,
                      keep_last: int, best: bool) -> Path:
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
    if ctx.is_main:
        (tmp / "plan.txt").write_text(plan_text + "\n")
        for name, text in run_files.items():
            (tmp / name).write_text(text)
    barrier()
    digests = _file_digests(tmp, ctx)  # everything above; meta.json and the marker are not data
    if ctx.is_main:
        full_meta = {"format": FORMAT, "step": step, "world_size": ctx.world_size,
                     "model_fingerprint": model_fingerprint(model), **meta, "files": digests}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        (tmp / MARKER).write_text("")
        swap_in(tmp, final)  # re-saving a step keeps the old copy complete until the new one is in place
        if best:
            _promote_best(final)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint written: %s%s", final, " (best so far)" if best else "")
    barrier()
    return final


def _promote_best(step_dir: Path) -> None:
    """RUN/checkpoints/best := a hard-linked copy of `step_dir`, swapped in atomically."""
    best = step_dir.parent / BEST
    tmp = step_dir.parent / f"{BEST}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(step_dir, tmp, copy_function=_link_or_copy)
    swap_in(tmp, best)
    fsync_dir(step_dir.parent)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an mtrec checkpoint (format {meta.get('format')!r}, want {FORMAT!r})")
    return meta


def verify_files(path: Path, meta: dict[str, Any], ctx: DistContext) -> None:
    """Collective: every file meta.json lists has its recorded size and sha256, and no DCP data file
    is unlisted. Every rank reaches the same verdict (the digests are gathered)."""
    listed = meta.get("files")
    if listed is None:
        raise CheckpointError(f"{path}: meta.json has no file list (written by an older mtrec); "
                              "it cannot be verified — retrain or re-save it")
    unlisted = sorted(p.name for p in path.iterdir() if p.suffix == ".distcp" and p.name not in listed)
    if unlisted:
        raise CheckpointError(f"{path}: data file(s) {unlisted} are not in meta.json's file list")
    actual = _file_digests(path, ctx)
    for name, want in sorted(listed.items()):
        got = actual.get(name)
        if got is None:
            raise CheckpointError(f"{path / name}: missing from the checkpoint")
        if "error" in got:
            raise CheckpointError(f"{path / name}: unreadable ({got['error']})")
        if got["bytes"] != want["bytes"]:
            raise CheckpointError(f"{path / name}: {got['bytes']} bytes, meta.json records {want['bytes']} "
                                  "(truncated or altered)")
        if got["sha256"] != want["sha256"]:
            raise CheckpointError(f"{path / name}: sha256 differs from meta.json (altered or corrupt)")


def check_keys(path: Path, saved: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]],
               section: str, hint: str) -> None:
    """Every tensor of `section` is accounted for: the same keys with the same global shapes."""
    saved = {k: v for k, v in saved.items() if k.startswith(f"{section}.")}
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected key(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if reshaped:
        problems.append("shape mismatch " + ", ".join(f"{k}: saved {list(saved[k])}, this job {list(wanted[k])}"
                                                      for k in reshaped[:5]))
    if problems:
        raise CheckpointError(f"{path}: {section} state does not match this job: {'; '.join(problems)}{hint}")


def saved_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor stored in a DCP checkpoint, from its metadata file."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    return {k: tuple(v.size) for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    ctx: DistContext, plan_text: Optional[str] = None) -> dict[str, Any]:
    """Collective. Restore the model (+ optimiser and RNG when `optimizer` is given, i.e. resuming)
    onto this job's world size and plan; files are verified against meta.json first (the ranks share the
    hashing, all reach the same verdict)."""
    meta = read_meta(path)
    verify_files(path, meta, ctx)
    state = _state(model, optimizer)
    saved = saved_shapes(path)
    hint = "; check --config against the run's config.yaml (the model differs)"
    check_keys(path, saved, all_ranks_shapes(state["model"], "model.", ctx), "model", hint)
    if optimizer is not None:
        plans = (f" (saved under {meta['world_size']} rank(s) with plan:\n{(path / 'plan.txt').read_text().strip()}\n"
                 f"this job: {ctx.world_size} rank(s) with plan:\n{plan_text})")
        check_keys(path, saved, all_ranks_shapes(state["optim"], "optim.", ctx), "optim",
                   f"; optimizer state cannot be moved between these layouts{plans}. Load the model only "
                   "(train --init-from) to continue from its weights with a fresh optimizer")
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__  # DCP nests tracebacks
        raise CheckpointError(f"{path}: could not read checkpoint data: {cause}") from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
        rng_path = path / f"rng_rank{ctx.rank}.pt"
        if meta["world_size"] == ctx.world_size and rng_path.is_file():
            torch.set_rng_state(torch.load(rng_path, weights_only=True)["torch"])
    log.info("loaded checkpoint %s (step %d, written by %d rank(s), loaded on %d)", path, meta["step"],
             meta["world_size"], ctx.world_size)
    return meta
