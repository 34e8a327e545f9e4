"""House rules that review alone keeps forgetting, checked on every Python file of the repository.

- Library code never prints: only the CLI (pipeline/cli/) writes to stdout; the rest logs.
- YAML is read with `yaml.safe_load` only; nothing unpickles: no `pickle`, and every `torch.load`
  outside tests passes `weights_only=True`.
- No unused imports or names (pyflakes). A line marked `# noqa` is an intended exception (an import
  for its side effect, a pytest fixture imported from another test module).

Each rule is a function of (path, source) returning its findings, so that the tests below can show
it catches a planted violation as well as pass on the repository.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pyflakes.api import check as pyflakes_check
from pyflakes.reporter import Reporter

from tests.conftest import REPO, repo_files

LIBRARY = ("pipeline", "models")
UNSAFE_YAML = {"load", "full_load", "unsafe_load", "load_all", "full_load_all", "unsafe_load_all"}


def python_files() -> list[Path]:
    return [p for p in repo_files() if p.suffix == ".py"]


def _calls(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def prints_in_library(path: Path, source: str) -> list[str]:
    rel = path.relative_to(REPO)
    if rel.parts[0] not in LIBRARY or rel.parts[:2] == ("pipeline", "cli"):
        return []
    return [f"{rel}:{c.lineno}: print() in library code (log instead)" for c in _calls(ast.parse(source))
            if isinstance(c.func, ast.Name) and c.func.id == "print"]


def unsafe_deserialisation(path: Path, source: str) -> list[str]:
    rel = path.relative_to(REPO)
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                found.append(f"{rel}:{node.lineno}: imports a pickle module")
    for call in _calls(tree):
        func = call.func
        if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            continue
        if func.value.id == "yaml" and func.attr in UNSAFE_YAML:
            found.append(f"{rel}:{call.lineno}: yaml.{func.attr} (use yaml.safe_load)")
        if func.value.id == "torch" and func.attr == "load" and rel.parts[0] != "tests":
            weights_only = [k.value for k in call.keywords if k.arg == "weights_only"]
            if not (weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True):
                found.append(f"{rel}:{call.lineno}: torch.load without weights_only=True")
    return found


class _Collect(Reporter):
    def __init__(self) -> None:
        self.messages: list = []

    def unexpectedError(self, filename, msg) -> None:
        self.messages.append((filename, 0, msg))

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:
        self.messages.append((filename, lineno, msg))

    def flake(self, message) -> None:
        self.messages.append((message.filename, message.lineno, message.message % message.message_args))


def unused_names(path: Path, source: str) -> list[str]:
    reporter = _Collect()
    pyflakes_check(source, str(path), reporter)
    lines = source.splitlines()
    return [f"{path.relative_to(REPO)}:{lineno}: {msg}" for _, lineno, msg in reporter.messages
            if not (0 < lineno <= len(lines) and "# noqa" in lines[lineno - 1])]


RULES = [prints_in_library, unsafe_deserialisation, unused_names]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_the_repository_follows_the_rule(rule):
    findings = [f for path in python_files() for f in rule(path, path.read_text())]
    assert not findings, "\n".join(findings)


PLANTED = {
    prints_in_library: ("pipeline/data/planted.py", "def f():\n    print('hi')\n"),
    unsafe_deserialisation: ("pipeline/planted.py",
                             "import pickle\nimport torch\nimport yaml\n"
                             "a = yaml.load(open('x'))\nb = torch.load('x')\nc = torch.load('x', weights_only=False)\n"),
    unused_names: ("benchmarks/planted.py", "import os\nimport sys  # noqa: F401\n"),
}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_the_rule_catches_a_planted_violation(rule):
    rel, source = PLANTED[rule]
    findings = rule(REPO / rel, source)
    expected = {prints_in_library: 1, unsafe_deserialisation: 4, unused_names: 1}[rule]
    assert len(findings) == expected, findings
    assert all(f.startswith(rel + ":") for f in findings)


def test_the_cli_may_print():
    assert prints_in_library(REPO / "pipeline/cli/planted.py", "print('table')\n") == []
