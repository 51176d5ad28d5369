"""One exception hierarchy for the whole package.

Every error says what is wrong and where (the layer, the file), and the CLI maps each class to
its own exit code, so scripts can tell bad input from a parity failure from a missing runtime.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# ANSI escape sequences (colours, cursor moves) and other control characters.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
# PyTorch's advice on a refused pickle: loading with weights_only=False runs the file's code.
_UNSAFE_ADVICE = re.compile(r"weights_only\s*=\s*False|weights only load failed", re.IGNORECASE)


def plain_line(text: str) -> str:
    """The first non-empty line of `text`, without escape sequences or control characters.

    A library's message that advises `weights_only=False` (advice that runs code from the file)
    is replaced by a neutral statement of what happened.

    Example:
        >>> plain_line("\x1b[1mboom\x1b[0m\nTraceback ...")
        'boom'
    """
    lines = [line.strip() for line in _ESCAPES.sub("", text.replace("\t", " ")).splitlines()]
    line = next((line for line in lines if line), "")
    if _UNSAFE_ADVICE.search(line):
        return "the weights-only unpickler refused it (it pickles objects other than tensors)"
    return line


class GDWSExportError(Exception):
    """Base class of every error gdws-export raises on purpose."""

    exit_code = 1


class InvalidInputError(GDWSExportError, ValueError):
    """A bad argument, file or setting (a wrong beta, a corrupt checkpoint, a bad shape)."""

    exit_code = 2


class UnsupportedModelError(GDWSExportError):
    """The model loads but cannot be approximated or exported (no conv, failing forward)."""

    exit_code = 3


class ParityError(GDWSExportError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""

    exit_code = 4


class MissingDependencyError(GDWSExportError, ImportError):
    """An optional runtime (TensorRT, onnxslim, ...) is needed but not installed."""

    exit_code = 5


def shown(items: Sequence[str], limit: int, separator: str = ", ") -> str:
    """The first `limit` items for a one-line message, then how many more: a cut list says
    it was cut ("a, b, c, ... (9 in all)")."""
    items = [str(item) for item in items]
    if len(items) <= limit:
        return separator.join(items)
    return separator.join(items[:limit]) + f"{separator}... ({len(items)} in all)"
