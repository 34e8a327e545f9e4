"""TorchX components: `train` and `evaluate` as AppDefs built on `dist.ddp`.

    torchx run -s local_cwd pipeline/components.py:train --config configs/census_adatt.yaml \\
        --data runs/data/census --out runs/adatt -j 1x2
    torchx run -s local_docker --workspace "" pipeline/components.py:train --image mtrec:cpu ... -j 2x1

The same components run on `slurm` and `kubernetes` (docs/CLUSTER.md). Every replica runs
`torchrun ... -m pipeline <command>`, so a job is exactly the plain CLI under torchrun.
TorchX 0.7.0's component linter wants `typing` generics (List/Dict/Optional), not PEP 585/604.
"""
from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components import dist


def _ddp(args: List[str], name: str, image: str, j: str, cpu: int, gpu: int, memMB: int, max_retries: int,
         max_restarts: int, mounts: Optional[List[str]], env: Optional[Dict[str, str]], rdzv_port: int) -> specs.AppDef:
    # torchrun sets OMP_NUM_THREADS=1 for several local ranks and prints a banner about it; set it
    # explicitly (the replica's CPUs shared by its ranks) so the log starts with our own lines.
    nproc_per_node = dist.parse_nnodes(j)[2]
    env = {"OMP_NUM_THREADS": str(max(1, cpu // nproc_per_node)), **(env or {})}
    app = dist.ddp(*args, m="pipeline", name=name, image=image, j=j, cpu=cpu, gpu=gpu, memMB=memMB,
                   max_retries=max_retries, mounts=mounts, env=env, rdzv_port=rdzv_port)
    if max_restarts:
        # dist.ddp has no knob for torchrun's own restarts; they re-launch every local worker, which
        # then resume from the latest complete checkpoint (a failed rank never needs a person).
        role = app.roles[0]
        role.args[-1] = role.args[-1].replace("torchrun ", f"torchrun --max-restarts {max_restarts} ", 1)
    return app


def train(
    config: str,
    data: str,
    out: str,
    max_steps: Optional[int] = None,
    epochs: Optional[int] = None,
    seed: Optional[int] = None,
    overrides: Optional[List[str]] = None,
    init_from: Optional[str] = None,
    no_resume: bool = False,
    accept_config_changes: bool = False,
    image: str = "mtrec:cpu",
    j: str = "1x2",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    max_retries: int = 0,
    max_restarts: int = 0,
    mounts: Optional[List[str]] = None,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Train a multi-task model with sharded embeddings (mtrec train) on nnodes x nproc_per_node ranks.

    Args:
        config: job YAML (e.g. configs/census_adatt_dml.yaml), a path inside the image or the CWD
        data: dataset directory written by `mtrec prepare`
        out: run directory (checkpoints, sharding plan, logs); shared by every replica
        max_steps: step budget (overrides train.max_steps)
        epochs: number of epochs (overrides train.epochs)
        seed: random seed (overrides train.seed)
        overrides: extra key=value config overrides, e.g. train.batch_size=512
        init_from: fine-tune from the weights of this checkpoint or run directory (fresh optimizer and data position)
        no_resume: start fresh even if out has checkpoints
        accept_config_changes: resume although the model, optimizer, batch size or seed differ from the checkpoint's
        image: container image (ignored by local_cwd)
        j: [{min_nnodes}:]{nnodes}x{nproc_per_node}
        cpu: CPUs per replica
        gpu: GPUs per replica
        memMB: memory per replica in MB (also the container's /dev/shm size on local_docker)
        max_retries: scheduler-level retries of a failed replica
        max_restarts: torchrun-level restarts of all local workers; they resume from the last checkpoint
        mounts: mounts, e.g. type=bind,src=/host/runs,dst=/runs
        env: environment variables for every replica
        rdzv_port: port of the c10d rendezvous on replica 0 (multi-node)
    """
    args = ["train", "--config", config, "--data", data, "--out", out]
    for flag, value in (("--max-steps", max_steps), ("--epochs", epochs), ("--seed", seed)):
        if value is not None:
            args += [flag, str(value)]
    if init_from is not None:
        args += ["--init-from", init_from]
    args += [flag for flag, on in (("--no-resume", no_resume), ("--accept-config-changes", accept_config_changes)) if on]
    args += list(overrides or [])
    return _ddp(args, "mtrec-train", image, j, cpu, gpu, memMB, max_retries, max_restarts, mounts, env, rdzv_port)


def evaluate(
    checkpoint: str,
    data: str,
    out: str,
    config: Optional[str] = None,
    which: str = "best",
    write_predictions: bool = False,
    auc_mode: str = "bounded",
    different_encoding: bool = False,
    overrides: Optional[List[str]] = None,
    image: str = "mtrec:cpu",
    j: str = "1x1",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    mounts: Optional[List[str]] = None,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Stream a Parquet log through a trained model and write per-task NE/AUC/calibration (mtrec evaluate).

    Args:
        checkpoint: run directory (its best checkpoint, else latest), RUN/checkpoints/latest, or a checkpoint directory
        data: dataset split directory or a Parquet glob
        out: report directory
        config: job YAML; default: the one stored with the checkpoint (a differing model is refused)
        which: with a run directory: best (by validation) or latest
        write_predictions: also write predictions to Parquet (one file per rank)
        auc_mode: bounded (histogram, certified error bound) or exact
        different_encoding: score data encoded differently from the training data (refused without it)
        overrides: key=value config overrides, e.g. model.dml.gkd.serve_head=local or eval.batch_size=4096
        image: container image (ignored by local_cwd)
        j: [{min_nnodes}:]{nnodes}x{nproc_per_node}
        cpu: CPUs per replica
        gpu: GPUs per replica
        memMB: memory per replica in MB
        mounts: mounts, e.g. type=bind,src=/host/runs,dst=/runs
        env: environment variables for every replica
        rdzv_port: port of the c10d rendezvous on replica 0 (multi-node)
    """
    args = ["evaluate", "--checkpoint", checkpoint, "--which", which, "--data", data, "--out", out,
            "--auc-mode", auc_mode]
    if config is not None:
        args += ["--config", config]
    args += [flag for flag, on in (("--write-predictions", write_predictions),
                                   ("--different-encoding", different_encoding)) if on]
    args += list(overrides or [])
    return _ddp(args, "mtrec-evaluate", image, j, cpu, gpu, memMB, 0, 0, mounts, env, rdzv_port)
