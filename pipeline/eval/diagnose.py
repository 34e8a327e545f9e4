"""`mtrec diagnose`: average gate / fusion weights per level over a data split, and heatmaps of them.

The AdaTT paper's Figure 3 analogue: per level, a matrix whose row m is gated module m (task units,
then the shared unit where it has a gate) and whose column j is expert module j (task units, then
the shared unit): the share of module m's gate that goes to module j's experts (the gate weights
summed over each module's expert block). Rows sum to 1.

AdaTT's native-expert residual (eq 11, f = (G + pad(v)) . E) is not a gate but a learned parameter,
the same for every row of data. [project] It is reported as a second matrix, `fusion`: the block
sums of G + pad(v), whose rows sum to 1 + sum(v_m); v may be negative, so its heatmap shows each
row divided by the sum of its absolute values. Backbones whose experts belong to no task (MMoE,
ML-MMoE) get the module-free [M, E] gate matrix only; shared-bottom and cross-stitch have no gates
(gates.json says so and no heatmap is drawn).

Averaging: every rank feeds each of its batches through `gate_weights` (the sharded embedding
lookup is a collective, so all ranks run the same number of steps; padding batches count 0 rows),
sums batch means times rows, and the sums are all-reduced: the result is the row-weighted mean over
the whole split for any world size.

Outputs (rank 0, each written atomically): OUT/gates.json and OUT/gates_level<l>.png.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from matplotlib.figure import Figure

from models.adatt import AdaTTGeneral, AdaTTSp
from models.batch import MultiTaskBatch
from models.blocks import LevelStack
from models.multitask_model import MultiTaskModel
from models.ple import PLE
from pipeline.runtime.atomic import atomic_write_text
from pipeline.data.reader import padding_batch
from pipeline.eval.evaluate import inference_job
from pipeline.runtime.inference import eval_batches
from pipeline.eval.plots import save_png
from pipeline.runtime.distributed import DistContext

log = logging.getLogger(__name__)

GATES_JSON = "gates.json"
SHARED = "shared"


def expert_modules(backbone: torch.nn.Module, task_names: list[str]) -> Optional[tuple[list[str], list[int]]]:
    """(module names, experts per module) in bank order for backbones whose experts belong to task
    units (PLE/CGC, AdaTT-sp, AdaTT-general); None for MMoE/ML-MMoE (experts owned by no task)."""
    if isinstance(backbone, AdaTTSp):
        return list(task_names), [backbone.num_task_experts] * len(task_names)
    if isinstance(backbone, AdaTTGeneral):
        return [*task_names, SHARED], list(backbone.module_experts)
    if isinstance(backbone, PLE):
        shared = [SHARED] if backbone.num_shared_experts else []
        return [*task_names, *shared], [*backbone.task_experts, *([backbone.num_shared_experts] * len(shared))]
    return None


def module_blocks(matrix: np.ndarray, experts_per_module: list[int]) -> np.ndarray:
    """[M, E] -> [M, J]: the sum over each module's contiguous block of experts."""
    edges = np.cumsum([0, *experts_per_module])[:-1]
    return np.add.reduceat(matrix, edges, axis=1)


class GateAccumulator:
    """Row-weighted sums of per-level gate means; `mean()` after `all_reduce_()`."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []
        self.rows = torch.zeros((), dtype=torch.float64)

    def add(self, level_means: list[torch.Tensor], rows: int) -> None:
        """level_means: per level [M_l, E_l] batch means; rows: real rows of the batch (0 = padding)."""
        if not self.sums:
            self.sums = [torch.zeros(g.shape, dtype=torch.float64) for g in level_means]
        for total, g in zip(self.sums, level_means):
            total += g.detach().to("cpu", torch.float64) * rows
        self.rows += rows

    def all_reduce_(self, device: torch.device) -> None:
        flat = torch.cat([self.rows.reshape(1), *(s.reshape(-1) for s in self.sums)]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        self.rows = flat[0]
        offset = 1
        for s in self.sums:
            s.copy_(flat[offset:offset + s.numel()].view_as(s))
            offset += s.numel()

    def mean(self) -> list[np.ndarray]:
        if self.rows <= 0:
            raise ValueError("diagnose: the split has no rows")
        return [(s / self.rows).numpy() for s in self.sums]


def accumulate_gates(model: MultiTaskModel, batches: Iterator[MultiTaskBatch], padding: MultiTaskBatch,
                     ctx: DistContext) -> GateAccumulator:
    """Every rank calls gate_weights on each of its (equal-count) batches; padding counts 0 rows."""
    acc = GateAccumulator()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            rows = 0 if batch is padding else batch.labels.shape[0]
            acc.add(model.gate_weights(batch.to(ctx.device)), rows)
    model.train(was_training)
    acc.all_reduce_(ctx.device)
    return acc


def native_residuals(backbone: torch.nn.Module, levels: int) -> list[Optional[np.ndarray]]:
    """Per level AdaTT's padded native weights pad(v) [M, E], or None (no residual / not AdaTT)."""
    if not isinstance(backbone, LevelStack):
        return [None] * levels
    ref = next(backbone.parameters())
    out = []
    with torch.no_grad():
        for level in range(levels):
            r = backbone.residual(level, ref)
            out.append(None if r is None else r.detach().to("cpu", torch.float64).numpy())
    return out


def level_diagnostics(gates: np.ndarray, residual: Optional[np.ndarray],
                      modules: Optional[tuple[list[str], list[int]]]) -> dict[str, Any]:
    """One level's entry of gates.json (see the module docstring)."""
    entry: dict[str, Any] = {"gates": gates.tolist()}
    if modules is None:
        return entry
    names, counts = modules
    entry["gate_modules"] = names[:gates.shape[0]]
    entry["expert_modules"] = names
    entry["task_matrix"] = module_blocks(gates, counts).tolist()
    if residual is not None:
        entry["native"] = residual.tolist()
        entry["fusion"] = module_blocks(gates + residual, counts).tolist()
    return entry


def plot_level(level: int, entry: dict[str, Any], path: Path) -> None:
    """Heatmap(s) of one level: the gate shares, and AdaTT's fusion shares when it has a residual."""
    panels = [("gate share", np.asarray(entry.get("task_matrix", entry["gates"])))]
    if "fusion" in entry:
        fusion = np.asarray(entry["fusion"])
        panels.append(("fusion incl. native, w / row sum |w|",
                       fusion / np.abs(fusion).sum(axis=1, keepdims=True)))
    figure = Figure(figsize=(5.2 * len(panels), 4.6))
    for i, (title, matrix) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        image = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1.0)
        rows = entry.get("gate_modules", [f"gate {m}" for m in range(matrix.shape[0])])
        cols = entry.get("expert_modules", [f"expert {e}" for e in range(matrix.shape[1])])
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(title=f"level {level + 1}: {title}", xlabel="experts of", ylabel="gate of")
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    save_png(figure, path)


def write_diagnostics(out: Path, report: dict[str, Any]) -> None:
    """Heatmaps first, gates.json last (its presence means the directory is complete)."""
    for level, entry in enumerate(report["levels"]):
        plot_level(level, entry, out / f"gates_level{level + 1}.png")
    atomic_write_text(out / GATES_JSON, json.dumps(report, indent=2, allow_nan=False) + "\n")


def diagnose_main(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Entry point of `mtrec diagnose`; returns the gates report on rank 0 (None elsewhere)."""
    with inference_job(args) as job:
        cfg, inputs, ctx = job.cfg, job.inputs, job.ctx
        inner: MultiTaskModel = job.model.module  # DMP's `module` unwraps DMP/DDP to the sharded model
        batches, steps = eval_batches(job.schema, job.paths, ctx, batch_size=cfg.eval.batch_size,
                                      num_workers=cfg.data.num_workers, with_keys=True, max_steps=args.max_batches)
        acc = accumulate_gates(inner, batches, padding_batch(job.schema), ctx)
        report: dict[str, Any] = {**job.provenance(), "data": args.data,
                                  "backbone": cfg.model.backbone.type, "tasks": inputs.task_names,
                                  "rows": int(acc.rows), "batches": steps, "world_size": ctx.world_size,
                                  "levels": []}
        if acc.sums:
            modules = expert_modules(inner.backbone, inputs.task_names)
            residuals = native_residuals(inner.backbone, len(acc.sums))
            report["levels"] = [level_diagnostics(g, r, modules) for g, r in zip(acc.mean(), residuals)]
        else:
            report["note"] = f"backbone {cfg.model.backbone.type} has no gates"
        if ctx.is_main:
            write_diagnostics(Path(args.out), report)
            log.info("gate diagnostics written to %s", args.out)
        return report if ctx.is_main else None
