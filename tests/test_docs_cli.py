"""docs/cli.md covers every flag of every subcommand, so it cannot drift from --help again."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from gdws_export.cli import COMMANDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _flags(command: str) -> list[str]:
    module = importlib.import_module(f"gdws_export.cli.{command}")
    parser = argparse.ArgumentParser(prog="gdws-export")
    module.add_parser(parser.add_subparsers())
    (subparser,) = parser._subparsers._group_actions[0].choices.values()
    return [
        option
        for action in subparser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_documented(command):
    text = DOC.read_text()
    flags = _flags(command)
    assert flags, f"no flags found for {command}: the test would pass vacuously"
    missing = [flag for flag in flags if f"`{flag}" not in text]
    assert missing == [], f"docs/cli.md does not document {command}'s {missing}"


def test_every_subcommand_has_a_section():
    text = DOC.read_text()
    for command in COMMANDS:
        if command != "export":  # the command's main section
            assert f"### `gdws-export {command}`" in text
