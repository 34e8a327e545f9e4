"""Cheap checks of the Docker files (no engine needed): non-root user, offline installs, the build
context whitelist, CUDA lock in step with the CPU lock, and the build script's argument check."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO

DOCKER = REPO / "docker"


def dockerfile_stages() -> list[list[str]]:
    """Instructions of docker/Dockerfile (continuations joined, comments dropped), split by FROM."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    stages: list[list[str]] = [[]]
    for line in (ln.strip() for ln in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_runtime_stage_is_non_root_and_offline():
    preamble, *stages = dockerfile_stages()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in preamble
    users = [line.split()[1] for line in stages[-1] if line.upper().startswith("USER ")]
    assert users and users[-1] == "mtrec", "the runtime stage must end as the non-root user"
    everything = [line for stage in stages for line in stage]
    assert not any(line.upper().startswith("ENTRYPOINT") for line in everything)
    installs = [m for line in everything for m in re.findall(r"pip[^;&|]* install [^;&|]*", line)]
    assert installs and all("--no-index" in cmd for cmd in installs), installs
    smoke = " ".join(line for line in stages[-1] if line.upper().startswith("RUN "))
    assert "python -m pipeline.stack" in smoke and "import torchrec, pipeline, models" in smoke


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """docker/.dockerignore as (negated, regex) rules, following Docker's pattern syntax."""
    rules = []
    for raw in (DOCKER / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + "$")))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker semantics: the last rule matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    included = True
    for negated, regex in rules:
        if any(regex.match(p) for p in prefixes):
            included = negated
    return included


@pytest.mark.parametrize("path, expected", [
    ("Dockerfile", True),
    ("wheelhouse/cpu/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", True),
    ("wheelhouse/cpu/requirements.txt", True),
    ("build/project/mtrec-0.1.0-py3-none-any.whl", True),
    ("build/share/configs/census_adatt.yaml", True),
    ("build/share/data/census-income-kdd/census-income.data.gz", True),
    ("data/census/train/part-0.parquet", False),
    (".venv/bin/python", False),
    ("runs/census_adatt/checkpoints/step_10/meta.json", False),
    ("build/share/runs/x.json", False),
    ("build/project/__pycache__/x.cpython-311.pyc", False),
    ("build/project.tmp/mtrec-0.1.0-py3-none-any.whl", False),
    ("wheelhouse/cpu.tmp/torch.whl", False),
    ("notes.txt", False),
])
def test_dockerignore_keeps_only_what_the_image_needs(path, expected):
    assert in_context(path, dockerignore_rules()) is expected


def pins(path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            found[m[1].lower()] = m[2]
    return found


def test_cuda_lock_matches_the_cpu_lock_except_the_device_pair():
    cpu, cuda = pins(REPO / "requirements" / "cpu.txt"), pins(DOCKER / "requirements-cuda.txt")
    assert cuda.pop("fbgemm-gpu") == cpu.pop("fbgemm-gpu-cpu"), "fbgemm-gpu and fbgemm-gpu-cpu must be the same release"
    assert "fbgemm-gpu-cpu" not in cuda
    assert cuda == cpu


@pytest.mark.parametrize("script", ["docker_engine.sh", "docker_base.sh", "docker_build.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=True)


def test_build_rejects_an_unknown_device_before_touching_docker():
    proc = subprocess.run([str(REPO / "scripts" / "docker_build.sh"), "--device", "tpu"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--device must be cpu or cuda, got 'tpu'" in proc.stderr
