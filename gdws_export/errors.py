"""One exception hierarchy for the whole package.

Every error says what is wrong and where (the layer, the file), and the CLI maps each class to
its own exit code, so scripts can tell bad input from a parity failure from a missing runtime.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# ANSI escape sequences (colours, titles, cursor moves) and other control characters.
_ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# PyTorch's advice on a refused pickle: loading with weights_only=False runs the file's code.
_RUNS_CODE_ADVICE = re.compile(
    r"weights_only\W*(=|to|set to|as)?\W*False|can still be loaded", re.IGNORECASE
)


def plain_line(text: str) -> str:
    """One plain line of a message, whatever a library put in it.

    Keeps the first non-empty line; drops ANSI escape sequences and control characters
    (colours a library meant for its own terminal output), and any sentence advising
    `weights_only=False`, which would run code from the file: gdws-export's own messages say
    when and how to trust a file (--trust-pickle).

    Example:
        >>> plain_line("\x1b[1mboom\x1b[0m\nTraceback ...")
        'boom'
    """
    text = _ANSI_ESCAPE.sub("", text)
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(_CONTROL.sub(" ", line).split())
    sentences = re.split(r"(?<=[.;!?])\s+", line)
    kept = [s for s in sentences if not _RUNS_CODE_ADVICE.search(s)]
    if kept:
        return " ".join(kept)
    return "the weights-only unpickler refused it" if sentences and sentences[0] else ""


class GDWSExportError(Exception):
    """Base class of every error gdws-export raises on purpose."""

    exit_code = 1


class InvalidInputError(GDWSExportError, ValueError):
    """A bad argument, file or setting (a wrong beta, a corrupt checkpoint, a bad shape)."""

    exit_code = 2


class BudgetOutOfReachError(InvalidInputError):
    """A budget no choice of a compression method can meet (a MAC ratio below what its
    cheapest form of every layer keeps); `reachable` is the smallest ratio it can meet, when
    known, so a search can probe there instead."""

    def __init__(self, message: str, reachable: float | None = None) -> None:
        super().__init__(message)
        self.reachable = reachable


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
