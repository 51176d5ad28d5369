"""Atomic outputs: all or nothing, readable like any other file."""

from __future__ import annotations

import os
import stat

import pytest

from gdws_export._files import atomic_output, atomic_write_text


def test_success_renames_and_applies_the_umask(tmp_path):
    path = tmp_path / "report.json"
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "{}")
    finally:
        os.umask(old)
    assert path.read_text() == "{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "engine.plan"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("build failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["engine.plan"]
