"""The README's Layout table matches the package tree, both ways."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [
        path for row in rows for path in re.findall(r"`(gdws_export/[^`]*)`", row.split("|")[1])
    ]


def test_every_path_in_the_layout_table_exists():
    paths = _layout_paths()
    assert len(paths) >= 10
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []


def test_every_package_and_module_is_in_the_layout_table():
    listed = {p.rstrip("/") for p in _layout_paths()}
    package = ROOT / "gdws_export"
    entries = {
        f"gdws_export/{p.name}"
        for p in package.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
    }
    assert sorted(entries - listed) == []


def test_the_first_screen_holds_both_commands():
    """The main job on a bundled model and the tests, each one line a newcomer can paste; the
    test command is the one CI runs, and the files the main command names are bundled."""
    first_screen = (ROOT / "README.md").read_text().splitlines()[:40]
    commands = [line for line in first_screen if line.startswith("bash scripts/setup.sh && ")]
    assert len(commands) == 2
    export, tests = commands
    assert tests.split("&& ", 1)[1] in (ROOT / ".ci" / "run").read_text()
    for path in re.findall(r"models/\S+", export):
        assert (ROOT / path).is_file(), path
