"""The docs stand alone and their commands run as written.

- Every `docs/MATH.md §N` / `docs/STACK.md §N.M` citation in the repository names a heading that
  exists (`## N.` / `### N.M`).
- No file of the repository refers to material outside it; every relative Markdown link resolves.
- The ```bash blocks of the user-facing sections run as written, in order, as one shell session in
  a scratch directory that looks like the checkout (symlinks to everything but `runs/`), with the
  venv first on PATH and MTREC_MAX_STEPS=20 so that every `mtrec train` stops after 20 steps.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, job_env, repo_files

# Citations: "docs/MATH.md §3.6", ranges "§3.6-3.7" / "§10.2–10.3" / "§0–§7" (both ends checked).
CITATION = re.compile(r"docs/(MATH|STACK)\.md §(\d+(?:\.\d+)?)(?:\s*[-–]\s*§?(\d+(?:\.\d+)?))?")
SECTION_HEADING = re.compile(r"^(##|###) (\d+(?:\.\d+)?)[. ]", re.MULTILINE)
# Spelled in pieces so that this file does not contain what it looks for.
OUTSIDE_REFERENCES = ("../" + "shared", "shared" + "/spec", "PLATFORM" + ".md")

# (file, section heading): the sections whose bash blocks a new user runs first.
DOC_SESSIONS = [
    pytest.param("README.md", "Using it", id="README-using-it", marks=pytest.mark.slow),
    pytest.param("docs/DATA.md", "Bring your own data", id="DATA-bring-your-own-data", marks=pytest.mark.slow),
]
# Top-level entries the scratch checkout does not link: outputs of earlier runs, git, caches.
NOT_LINKED = {"runs", ".git", ".pytest_cache"}


def section_numbers(doc: Path) -> set[str]:
    """'3' for a heading '## 3. ...', '3.1' for '### 3.1 ...'; a number at the wrong level does not count."""
    return {number for level, number in SECTION_HEADING.findall(doc.read_text())
            if (level == "##") == ("." not in number)}


def citations() -> dict[tuple[str, str], list[str]]:
    """(doc, section) -> the files citing it; a range cites both ends (an end without a dot keeps
    the start's major number: §7.12-15 is §7.12 and §7.15)."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in repo_files():
        if path.suffix in {".png", ".gz", ".parquet", ".jsonl"}:
            continue
        for doc, start, end in CITATION.findall(path.read_text(errors="replace")):
            numbers = [start]
            if end:
                numbers.append(end if "." in end or "." not in start else f"{start.split('.')[0]}.{end}")
            for number in numbers:
                found.setdefault((doc, number), []).append(str(path.relative_to(REPO)))
    return found


def test_every_math_and_stack_citation_names_an_existing_heading():
    cited = citations()
    assert {doc for doc, _ in cited} == {"MATH", "STACK"}, "the citation scan found nothing to check"
    missing = [f"docs/{doc}.md §{number} (cited by {', '.join(sorted(set(files)))})"
               for (doc, number), files in sorted(cited.items())
               if number not in section_numbers(REPO / "docs" / f"{doc}.md")]
    assert not missing, "citations without a heading:\n" + "\n".join(missing)


# Markdown links and images to files: [text](path) / ![alt](path), not URLs or #anchors.
LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)(?:#[^)]*)?\)")


def test_every_relative_link_of_the_markdown_files_points_to_a_file():
    broken = [f"{path.relative_to(REPO)}: {target}" for path in repo_files() if path.suffix == ".md"
              for target in LINK.findall(path.read_text()) if not (path.parent / target).exists()]
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_no_file_refers_to_material_outside_the_repository():
    offending = []
    for path in repo_files():
        if path.suffix == ".jsonl":  # run ledgers record where runs were made; not documentation
            continue
        data = path.read_bytes()
        offending += [f"{path.relative_to(REPO)}: {ref}" for ref in OUTSIDE_REFERENCES if ref.encode() in data]
    assert not offending, "references outside the repository:\n" + "\n".join(offending)


def bash_blocks(doc: str, heading: str) -> list[str]:
    """The ```bash blocks of the section titled `heading` (an optional number before the title is
    allowed), up to the next heading of the same or a higher level."""
    text = (REPO / doc).read_text()
    start = re.search(rf"^(#+) (?:[\d.]+ )?{re.escape(heading)}\s*$", text, re.MULTILINE)
    if start is None:
        pytest.fail(f"{doc} has no section '{heading}'")
    end = re.compile(rf"^#{{1,{len(start.group(1))}}} ", re.MULTILINE).search(text, start.end())
    section = text[start.end(): end.start() if end else len(text)]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    if not blocks:
        pytest.fail(f"{doc}, section '{heading}': no ```bash block")
    return blocks


def scratch_checkout(root: Path) -> Path:
    """A directory that looks like the repository root to the commands (relative paths such as
    configs/ and .venv/ resolve) but has its own, empty runs/."""
    root.mkdir()
    for entry in sorted(os.listdir(REPO)):
        if entry not in NOT_LINKED:
            (root / entry).symlink_to(REPO / entry)
    return root


@pytest.mark.parametrize("doc,heading", DOC_SESSIONS)
def test_documented_session_runs_as_written(doc, heading, tmp_path):
    script = tmp_path / "session.sh"
    script.write_text("\n".join(bash_blocks(doc, heading)))
    env = job_env()
    env["MTREC_MAX_STEPS"] = "20"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHXCONFIG"):
        env.pop(name, None)
    # -e / pipefail: the first failing command ends the session; -x: its trace line names it.
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", str(script)], env=env, capture_output=True,
                          text=True, timeout=900, cwd=scratch_checkout(tmp_path / "checkout"))
    traced = [line for line in proc.stderr.splitlines() if line.startswith("+ ")]
    assert proc.returncode == 0, (f"{doc}, section '{heading}': `{traced[-1][2:] if traced else '?'}` exited "
                                  f"{proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")


@pytest.mark.slow
def test_make_run_runs_as_written(tmp_path):
    """README's first command, `make run`, in a scratch checkout with MTREC_MAX_STEPS=20: set-up is a
    no-op on the prepared .venv, then census is prepared, trained on 2 ranks and scored through TorchX,
    and the per-task test table is printed."""
    env = job_env()
    env["MTREC_MAX_STEPS"] = "20"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHXCONFIG"):
        env.pop(name, None)
    checkout = scratch_checkout(tmp_path / "checkout")
    proc = subprocess.run(["make", "run"], env=env, capture_output=True, text=True, timeout=900, cwd=checkout)
    assert proc.returncode == 0, f"make run exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    # TorchX streams the job's output to its stderr, each line after a "role/replica [rank]:" prefix
    lines = [line.split("]:", 1)[-1] for line in (proc.stdout + proc.stderr).splitlines()]
    table = [line for line in lines if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[2:]] == ["| income", "| never_married", "| education"], proc.stdout
    assert all(line.split(" | ")[1] == "49,881" for line in table[2:])  # the whole test split, once
    report = json.loads((checkout / "runs" / "census_adatt_dml" / "report_test" / "report.json").read_text())
    assert report["trained_world_size"] == 2 and report["step"] <= 20
