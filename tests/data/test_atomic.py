"""Atomic outputs: nothing half-written ever carries the final name."""
from __future__ import annotations

import pytest

from pipeline.runtime.atomic import atomic_dir, atomic_path, atomic_write_text


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.parquet").write_text("x")
            raise RuntimeError("crash while writing")
    assert not out.exists() and _leftovers(tmp_path) == []
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()  # invisible until complete
    assert (out / "a").read_text() == "1"
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_atomic_dir_refuses_or_replaces_existing(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
            raise RuntimeError
    assert (out / "old").exists() and not (out / "new").exists()  # a failed replace keeps the old one
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"] and _leftovers(tmp_path) == []


def test_atomic_files(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "v1")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert target.read_text() == "v1" and _leftovers(target.parent) == []
    with atomic_path(target) as tmp:
        tmp.write_text("v2")
    assert target.read_text() == "v2"
