"""Run one CLI command module (`gdws_export/cli/<name>.py`) the way the CLI's main does."""

from __future__ import annotations

import argparse
from types import ModuleType


def run_command(module: ModuleType, argv: list[str]) -> int:
    """Parse `argv` with the module's parser and run it; errors propagate as exceptions."""
    parser = argparse.ArgumentParser(prog="gdws-export")
    subparsers = parser.add_subparsers(dest="command", required=True)
    module.add_parser(subparsers)
    return module.run(parser.parse_args([module.NAME, *map(str, argv)]))
