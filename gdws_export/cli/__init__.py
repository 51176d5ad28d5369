"""The `gdws-export` command: `gdws-export MODEL [options]` exports (the default command).

Each command is a module `gdws_export/cli/<name>.py` with `add_parser(subparsers)` and
`run(args) -> int`; commands whose module is absent are left out. `main` turns every
`GDWSExportError` into one line on stderr and its class's exit code (see `EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from types import ModuleType

from gdws_export.errors import GDWSExportError, plain_line

PROG = "gdws-export"
COMMANDS = ("export", "bench", "sweep")
DEFAULT_COMMAND = "export"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM (kill, docker stop, a scheduler's time limit)
# Loggers of the libraries a run drives; without -v nothing of theirs reaches stderr.
LIBRARY_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnx")
# Modules whose own writes to stderr (torch.export prints a failing graph there) are dropped
# without -v; see `_QuietStderr`.
LIBRARY_MODULES = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime")

EXIT_CODES = """\
exit codes:
  0    success
  1    internal error (a bug: rerun with -v for the traceback, and report it)
  2    bad input: a missing, corrupt or unsafe file, a bad option value, an existing
       output directory without --force, or one --force may not replace (not written by
       gdws-export, or holding the input or the current directory)
  3    unsupported model: no conv GDWS can replace, a forward pass or an export that fails
  4    parity failure: an exported graph or engine does not match the PyTorch model
  5    missing runtime or package (TensorRT, tritonclient, ...)
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM)
A run that fails or is interrupted leaves no output directory behind."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, like Ctrl-C, so every cleanup runs."""


class UsageError(Exception):
    """A command-line mistake found by argparse (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`main` prints it), not usage + message."""

    def error(self, message: str):  # argparse's hook; it must not return
        raise UsageError(message)


def available_commands() -> dict[str, ModuleType]:
    """Command name -> module, for the commands whose module is installed."""
    found = {}
    for name in COMMANDS:
        module_name = f"{__name__}.{name}"
        try:
            found[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # the module exists but something it imports is missing
                raise
    return found


def version_text() -> str:
    """'gdws-export X (torch Y, onnxruntime Z, tensorrt W)', without importing any of them."""
    parts = []
    for package in ("torch", "onnxruntime", "tensorrt"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} not installed")
    from gdws_export import __version__

    return f"{PROG} {__version__} ({', '.join(parts)})"


def build_parser(commands: dict[str, ModuleType] | None = None) -> Parser:
    """The top-level parser with one sub-parser per available command."""
    commands = available_commands() if commands is None else commands
    parser = Parser(
        prog=PROG,
        description="Make robust CNNs fast with GDWS convolutions on ONNX Runtime and TensorRT.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in commands.values():
        module.add_parser(subparsers).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see EXIT_CODES).

    `gdws-export MODEL ...` means `gdws-export export MODEL ...`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _error(f"no model given; usage: {PROG} MODEL [options] (see {PROG} --help)")
        return 2
    commands = available_commands()
    if argv[0] not in commands and argv[0] != "--version":
        argv = [DEFAULT_COMMAND, *argv]  # also makes `--help` show the export options
    try:
        args = build_parser(commands).parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except SystemExit as exc:  # --help and --version print and exit 0
        return exc.code if isinstance(exc.code, int) else 0
    verbose = getattr(args, "verbose", 0)
    try:
        with _sigterm_raises(), _library_noise(shown=verbose > 0):
            return args.run(args)
    except Terminated:
        _error("terminated (SIGTERM); no output was left behind")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _error("interrupted; no output was left behind")
        return EXIT_INTERRUPTED
    except GDWSExportError as exc:
        if verbose:
            traceback.print_exc()
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:  # a bug: say so in one line, the traceback on request
        if verbose:
            traceback.print_exc()
        _error(
            f"internal error ({type(exc).__name__}: {plain_line(str(exc))}); rerun with -v "
            "for the traceback and report it"
        )
        return 1


def _error(message: str) -> None:
    print(f"{PROG}: error: {plain_line(message)}", file=sys.stderr)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` while the command runs (Python's default is to die at once,
    leaving staging folders behind); the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():  # signals need the main one
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def _library_noise(*, shown: bool) -> Iterator[None]:
    """Library warnings and logs (exporter deprecations, torch.export notes) only with -v."""
    if shown:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    stderr = sys.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            # Above CRITICAL: their errors (fake-tensor tracebacks, graph dumps) restate the
            # exception that `main` prints as one line.
            logger.setLevel(logging.CRITICAL + 1)
        sys.stderr = _QuietStderr(stderr)
        try:
            yield
        finally:
            sys.stderr = stderr
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


class _QuietStderr:
    """sys.stderr, less what library code writes there itself (print(..., file=sys.stderr)).

    Our own lines (stage lines, warnings, tqdm bars) pass; a write whose calling frame is in
    one of `LIBRARY_MODULES` is dropped.
    """

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".", 1)[0] in LIBRARY_MODULES:
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


__all__ = [
    "COMMANDS",
    "EXIT_CODES",
    "Parser",
    "Terminated",
    "available_commands",
    "build_parser",
    "main",
]
