"""The Slurm and Kubernetes jobs of docs/CLUSTER.md, rendered by `torchx run --dryrun` exactly as the
page writes them (from the checkout, no cluster, no `sbatch`, no kubeconfig), and what they would do:
nodes, processes, the torchrun command, image, resources, mounts and retries. The commands carry no
`--workspace`: the checkout's `.torchxconfig` turns workspaces off, without which the Kubernetes
render would try to build an image from the checkout."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Optional

import pytest
import yaml

from tests.conftest import REPO, run_command
from tests.test_docs import bash_blocks

SCHEDULERS = {"slurm": "Slurm", "kubernetes": "Kubernetes"}  # scheduler -> its docs/CLUSTER.md section
# Where each documented job keeps its data and runs.
PATHS = {"slurm": {"data": "/shared/data/census", "run": "/shared/runs/adatt"},
         "kubernetes": {"data": "/runs/data/census", "run": "/runs/adatt"}}
IMAGE = "registry.example.com/mtrec:cuda"


@dataclass
class Node:
    """One replica (node) of a rendered job: its resources and the torchrun command it runs."""

    cpus: str
    mem_mb: str
    gpus: str
    torchrun: dict[str, str]  # torchrun's options, e.g. {"--nnodes": "2"}
    module: str
    args: list[str]  # the CLI arguments after `-m module`


@dataclass
class RenderedJob:
    nodes: list[Node]
    retries: int
    image: Optional[str]  # None on Slurm (the nodes run the submitting environment)
    volumes: dict[str, str]  # mount path -> what is mounted there (Kubernetes)


def documented_command(scheduler: str, component: str) -> str:
    """The `torchx run` command of docs/CLUSTER.md's section for `scheduler` that runs `component`."""
    commands = [line for block in bash_blocks("docs/CLUSTER.md", SCHEDULERS[scheduler])
                for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("torchx run") and f"pipeline/components.py:{component} " in line]
    assert len(commands) == 1, f"docs/CLUSTER.md, {SCHEDULERS[scheduler]}: {len(commands)} {component} commands"
    assert f"-s {scheduler} " in commands[0] and "--dryrun" in commands[0]
    return commands[0]


def parse_torchrun(command: str) -> tuple[dict[str, str], str, list[str]]:
    tokens = shlex.split(command)
    assert tokens[0] == "torchrun", command
    m = tokens.index("-m")
    return dict(zip(tokens[1:m:2], tokens[2:m:2])), tokens[m + 1], tokens[m + 2:]


def slurm_job(script: str) -> RenderedJob:
    """The sbatch script: one `#SBATCH` line per node (joined by `hetjob`), one srun with a
    `bash -c 'torchrun ...'` per node."""
    groups = [dict(opt.removeprefix("--").split("=", 1) for opt in line.split()[1:] if "=" in opt)
              for line in script.splitlines() if line.startswith("#SBATCH --")]
    srun = re.search(r"^srun .*?(?=^exitcode=)", script, re.MULTILINE | re.DOTALL).group(0)
    tokens = shlex.split(srun.replace("\\\n", " "))
    assert "--export=ALL" in " ".join(tokens), "the job must run with the submitting environment"
    commands = [parse_torchrun(tokens[i + 1]) for i, token in enumerate(tokens) if token == "-c"]
    assert len(commands) == len(groups)
    nodes = [Node(g["cpus-per-task"], g["mem"], g.get("gpus-per-task", "0"), *cmd) for g, cmd in zip(groups, commands)]
    retries = int(re.search(r"^export TORCHX_MAX_RETRIES=(\d+)$", script, re.MULTILINE).group(1))
    return RenderedJob(nodes, retries, None, {})


def kubernetes_job(request: str) -> RenderedJob:
    """The Volcano Job: one task (pod) per node."""
    job = yaml.safe_load(request)
    assert job["apiVersion"].startswith("batch.volcano.sh/") and job["kind"] == "Job"
    assert job["spec"]["schedulerName"] == "volcano" and job["spec"]["queue"] == "default"
    nodes, volumes, images = [], {}, set()
    for task in job["spec"]["tasks"]:
        assert task["replicas"] == 1
        pod = task["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"][:2] == ["bash", "-c"]
        limits = container["resources"]["limits"]
        nodes.append(Node(str(int(limits["cpu"].removesuffix("m")) // 1000), limits["memory"].removesuffix("M"),
                          limits.get("nvidia.com/gpu", "0"), *parse_torchrun(container["command"][2])))
        images.add(container["image"])
        sources = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName", "emptyDir") for v in pod["volumes"]}
        volumes.update({m["mountPath"]: sources[m["name"]] for m in container["volumeMounts"]})
    (image,) = images
    return RenderedJob(nodes, job["spec"]["maxRetry"], image, volumes)


def render(scheduler: str, component: str) -> RenderedJob:
    proc = run_command(["bash", "-c", documented_command(scheduler, component)], timeout=120)
    request = proc.stdout.split("=== SCHEDULER REQUEST ===\n", 1)[1]
    return slurm_job(request) if scheduler == "slurm" else kubernetes_job(request)


def flags(args: list[str]) -> dict[str, str]:
    """['train', '--config', 'c', ...] -> {'--config': 'c', ...} (every mtrec flag here takes a value)."""
    return dict(zip(args[1::2], args[2::2]))


def check_resources_and_image(job: RenderedJob, scheduler: str) -> None:
    for node in job.nodes:
        assert (node.cpus, node.mem_mb, node.gpus) == ("32", "131072", "8")
        assert node.module == "pipeline"
        assert node.torchrun["--nproc_per_node"] == "8" and node.torchrun["--rdzv_backend"] == "c10d"
    if scheduler == "kubernetes":
        assert job.image == IMAGE
        assert job.volumes == {"/runs": "mtrec-runs", "/dev/shm": "emptyDir"}
    else:
        assert job.image is None and not job.volumes


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_train_job_is_two_nodes_of_eight_gpus_with_restarts_and_retries(scheduler):
    job = render(scheduler, "train")
    check_resources_and_image(job, scheduler)
    assert len(job.nodes) == 2 and job.retries == 1
    for node in job.nodes:
        assert node.torchrun["--nnodes"] == "2" and node.torchrun["--max-restarts"] == "3"
        # Multi-node: every agent meets at node 0's c10d store, never a private localhost:0 one.
        assert node.torchrun["--rdzv_endpoint"].endswith(":29500")
        paths = PATHS[scheduler]
        assert node.args[0] == "train"
        assert flags(node.args) == {"--config": "configs/census_adatt.yaml", "--data": paths["data"], "--out": paths["run"]}
    first_host = {"slurm": "SLURM_JOB_NODELIST_HET_GROUP_0", "kubernetes": "VC_PIPELINE_0_HOSTS"}[scheduler]
    assert first_host in job.nodes[1].torchrun["--rdzv_endpoint"]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_evaluate_job_scores_the_best_checkpoint_on_one_node(scheduler):
    job = render(scheduler, "evaluate")
    check_resources_and_image(job, scheduler)
    assert len(job.nodes) == 1 and job.retries == 0
    (node,) = job.nodes
    assert node.torchrun["--nnodes"] == "1" and node.torchrun["--rdzv_endpoint"] == "localhost:0"
    assert "--max-restarts" not in node.torchrun
    assert node.args[0] == "evaluate"
    f = flags(node.args)
    assert f["--checkpoint"] == PATHS[scheduler]["run"] and f["--which"] == "best"
    assert f["--data"] == PATHS[scheduler]["data"] + "/test" and f["--out"] == PATHS[scheduler]["run"] + "/report"
    assert "--config" not in f  # the config stored with the run


# ----------------------------------------------------------------------------- criteo-like on GPUs

GPU_SECTION = "The criteo-like workload on 2 x 8 GPUs"


def _collapse_ranges(text: str) -> str:
    """'[8, 9, 10, 11]' -> '[8..11]': the doc abbreviates consecutive rank lists."""
    def collapse(match: re.Match) -> str:
        ranks = [int(r) for r in match.group(1).split(", ")]
        consecutive = len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1))
        return f"[{ranks[0]}..{ranks[-1]}]" if consecutive else match.group(0)
    return re.sub(r"\[(\d+(?:, \d+)+)\]", collapse, text)


def test_the_gpu_plan_of_the_criteo_like_workload_is_the_documented_one(tmp_path):
    """The section's commands as written (the data on a scratch path and 20,000 rows instead of
    100M: the table sizes do not depend on the row count): the dry run's summary line is the one the
    page shows, and the TorchX job is 2 nodes x 8 GPUs running that config with bf16."""
    (block,) = bash_blocks("docs/CLUSTER.md", GPU_SECTION)
    commands = [line.replace("/shared", str(tmp_path)) for line in block.replace("\\\n", " ").splitlines()]
    prepare, plan, submit = commands
    assert "--rows 100000000" in prepare
    run_command(["bash", "-c", prepare.replace("--rows 100000000", "--rows 20000")], timeout=300)
    printed = run_command(["bash", "-c", plan], timeout=300).stdout
    (summary,) = [line for line in printed.splitlines() if line.startswith("plan: ")]
    text = (REPO / "docs" / "CLUSTER.md").read_text()
    documented = re.search(r"^```\n(plan: 16 .*?)^```", text, re.MULTILINE | re.DOTALL).group(1)
    assert _collapse_ranges(summary) == " ".join(documented.split())
    job = slurm_job(run_command(["bash", "-c", submit], timeout=120).stdout.split("=== SCHEDULER REQUEST ===\n", 1)[1])
    check_resources_and_image(job, "slurm")
    assert len(job.nodes) == 2
    for node in job.nodes:
        f = flags(node.args[:7])
        assert f == {"--config": "configs/synthetic_criteo_like.yaml", "--data": f"{tmp_path}/data/criteo_like",
                     "--out": f"{tmp_path}/runs/criteo"}
        assert node.args[7:] == ["train.precision=bf16"]
