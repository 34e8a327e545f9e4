"""`mtrec train`: train a model on any world size (plain process = 1 rank)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.cli.options import add_overrides, examples_epilog, output_dir

EPILOG = examples_epilog(
    "mtrec train --config configs/census_adatt.yaml --data runs/data/census --out runs/adatt",
    "mtrec train --config configs/census_adatt.yaml --data runs/data/census --out runs/adatt_lr "
    "train.dense_optimizer.lr=0.002 --epochs 2",
    "mtrec train --config configs/census_adatt.yaml --data runs/data/census --out runs/adatt --print-config",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (any world size under torchrun; plain process = 1)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="job YAML (configs/*.yaml)")
    p.add_argument("--data", required=True, help="dataset directory written by `mtrec prepare`")
    p.add_argument("--out", required=True, type=output_dir,
                   help="run directory: checkpoints, plan.txt, train.log, metrics, resolved config.yaml")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="step budget (sets train.max_steps; the MTREC_MAX_STEPS environment variable caps it)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="number of epochs (sets train.epochs)")
    p.add_argument("--seed", type=int, default=None, help="seed of the model init and data order (sets train.seed)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint (automatic when --out has one)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if --out has checkpoints")
    p.add_argument("--accept-config-changes", action="store_true",
                   help="resume although the model, optimiser, batch size or seed differ from the run's checkpoint "
                        "(refused without it; budgets, cadences, workers, sharding and eval may always change)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="fine-tune: start from the model weights of a checkpoint or run directory (any world "
                        "size and plan; fresh optimizer and data position); ignored when --out has checkpoints")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file, extends, overrides, flags) as YAML and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model and its sharding plan, print the per-rank memory estimate, do not train")
    p.add_argument("--world-size", type=int, default=None,
                   help="with --dry-run: plan for N ranks (default: torchrun's WORLD_SIZE, else 1)")
    p.add_argument("--local-world-size", type=int, default=None,
                   help="with --dry-run: ranks per host (default: torchrun's LOCAL_WORLD_SIZE, else all)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="with --dry-run: plan for this device type (default: cuda when this machine has a GPU)")
    add_overrides(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pipeline.config import dump_job_config, train_job_config
    from pipeline.data.schema import DatasetSchema

    # Config and dataset are checked here, before torch is imported (seconds), not in the trainer.
    cfg = train_job_config(args.config, args.overrides, max_steps=args.max_steps, epochs=args.epochs, seed=args.seed)
    if args.print_config:
        print(dump_job_config(cfg), end="")
        return
    DatasetSchema.load(args.data)
    if args.dry_run:
        from pipeline.train.trainer import dry_run_main

        text = dry_run_main(args)
        if text is not None:  # rank 0
            print(text, end="")
        return
    from pipeline.cli.logs import add_run_log
    from pipeline.train.trainer import train_main

    add_run_log(Path(args.out), int(os.environ.get("RANK", "0")))
    summary = train_main(args)
    if summary is not None:  # rank 0
        print(summary_line(summary, args.out))


def summary_line(summary: dict, run_dir: str) -> str:
    """One line: steps, whether early stopping ended the run, each task's validation AUC (or the
    first metric it has) and where the rest is."""
    stopped = f", stopped early (best step {summary['best_step']})" if summary["stopped_early"] else ""
    scores = []
    for task, metrics in summary["validation"]["tasks"].items():
        name = next((m for m in ("auc", "ne", "mse") if metrics.get(m) is not None), None)
        scores.append(f"{task} {name} {metrics[name]:.4f}" if name else f"{task} n/a")
    return (f"trained {summary['steps']} steps on {summary['world_size']} rank(s){stopped}; "
            f"validation: {', '.join(scores)}; details in {run_dir}/summary.json and {run_dir}/train.log")
