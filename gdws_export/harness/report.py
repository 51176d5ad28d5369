"""Report files: JSON with a stable, versioned schema (docs/report-schema.md) and Markdown.

Every JSON report is one document:

    {"schema_version": 1, "kind": "speed" | "accuracy" | "sweep",
     "tool": {"name": "gdws-export", "version": "..."}, "created": "<UTC ISO 8601>",
     "report": {...}}

where "report" is the report object's `to_dict()`. Files are written to a temporary name
beside the target and renamed, so a crash never leaves a half-written report.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from gdws_export._files import atomic_write_text
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import AccuracyReport
from gdws_export.harness.plots import plot_sweep
from gdws_export.harness.speed_report import SpeedReport
from gdws_export.harness.sweep_report import SweepReport

Report = SpeedReport | AccuracyReport | SweepReport

SCHEMA_VERSION = 1
TOOL_NAME = "gdws-export"


KINDS: dict[str, type] = {"speed": SpeedReport, "accuracy": AccuracyReport, "sweep": SweepReport}


def report_kind(report: Report) -> str:
    """ "speed", "accuracy" or "sweep"."""
    for kind, cls in KINDS.items():
        if isinstance(report, cls):
            return kind
    raise InvalidInputError(
        f"not a harness report: {type(report).__name__}; expected SpeedReport, AccuracyReport "
        "or SweepReport"
    )


def to_document(report: Report) -> dict[str, Any]:
    """The JSON document of a report (see the module docstring)."""
    from gdws_export import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": report_kind(report),
        "tool": {"name": TOOL_NAME, "version": __version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "report": report.to_dict(),
    }


def from_document(document: dict[str, Any], where: str = "report") -> Report:
    """Rebuild a report object from its JSON document.

    Raises:
        InvalidInputError: not a gdws-export report, an unknown kind, or a newer schema.
    """
    if not isinstance(document, dict) or "schema_version" not in document:
        raise InvalidInputError(f"{where}: not a gdws-export report (no schema_version)")
    version = document["schema_version"]
    if version != SCHEMA_VERSION:
        raise InvalidInputError(
            f"{where}: schema_version {version!r} is not {SCHEMA_VERSION}; read it with the "
            "gdws-export version that wrote it"
        )
    kind = document.get("kind")
    if kind not in KINDS:
        raise InvalidInputError(f"{where}: unknown report kind {kind!r}; one of {list(KINDS)}")
    try:
        return KINDS[kind].from_dict(document["report"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{where}: malformed {kind} report ({type(exc).__name__}: {exc})"
        ) from None


def write_json(report: Report, path: str | os.PathLike) -> Path:
    """Write the report's JSON document atomically (strict JSON: no NaN or infinity)."""
    try:
        text = json.dumps(to_document(report), indent=2, allow_nan=False)
    except ValueError as exc:
        raise InvalidInputError(f"report for {path} holds a non-finite number ({exc})") from None
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Report:
    """Read a report written by `write_json`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInputError(f"report {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise InvalidInputError(f"report {path}: not JSON ({exc})") from None
    return from_document(document, where=f"report {path}")


def render_markdown(report: Report, *, plot: str | None = None) -> str:
    """The report as a Markdown document; `plot` is a PNG path relative to the .md (sweeps)."""
    from gdws_export import __version__

    kind = report_kind(report)
    header = f"# gdws-export {kind} report\n\nWritten by gdws-export {__version__}.\n\n"
    if kind == "sweep":
        return header + report.to_markdown(plot=plot)
    return header + report.to_markdown()


def write_markdown(report: Report, path: str | os.PathLike, *, plot: str | None = None) -> Path:
    """Write `render_markdown(report)` atomically."""
    return atomic_write_text(path, render_markdown(report, plot=plot))


def write_sweep(report: SweepReport, directory: str | os.PathLike, name: str = "sweep") -> dict:
    """Write a sweep's `<name>.json`, `<name>.png` plot and `<name>.md` in `directory`.

    Each file is written atomically, the JSON first (it needs no plotting library) and the
    Markdown last, so the Markdown never names a plot that is not there.

    Returns:
        {"json": Path, "plot": Path, "markdown": Path}
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = write_json(report, directory / f"{name}.json")
    plot = plot_sweep(report, directory / f"{name}.png")
    markdown = write_markdown(report, directory / f"{name}.md", plot=plot.name)
    return {"json": json_path, "plot": plot, "markdown": markdown}
