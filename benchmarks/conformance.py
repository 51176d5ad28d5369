"""Run the conformance matrix (tests/_conformance.py) and write its results as markdown.

Every architecture x model-file format x export setting: the exit code, the checks of
`check_run` (ONNX graphs and engine against PyTorch, the shipped `.pt2` against `gdws.onnx`
for --target torch), the original's MACs against FlopCounterMode, and the seconds. The table
is rewritten after every run, so an interrupted run keeps what it measured.

    PYTHONPATH=. .venv/bin/python benchmarks/conformance.py                  # everything
    PYTHONPATH=. .venv/bin/python benchmarks/conformance.py --formats pickle --runs default torch

The whole matrix (20 x 5 x 10 runs) takes a few hours on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from gdws_export._files import atomic_write_text
from tests import _conformance as conformance

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(conformance.ARCHITECTURES),
                        choices=list(conformance.ARCHITECTURES))  # fmt: skip
    parser.add_argument("--formats", nargs="+", default=list(conformance.FORMATS),
                        choices=conformance.FORMATS)  # fmt: skip
    parser.add_argument("--runs", nargs="+", default=list(conformance.RUNS),
                        choices=list(conformance.RUNS))  # fmt: skip
    parser.add_argument("--output", type=Path,
                        default=RESULTS / f"conformance-{datetime.now():%Y-%m-%d}.md")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, help="keep the model files and exports here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[str] = []
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for arch in args.archs:
            model = conformance.build(arch)
            for fmt in args.formats:
                for run in args.runs:
                    outcome = conformance.export(model, arch, fmt, run, work)
                    problems = conformance.check_run(outcome)
                    macs = conformance.macs_problem(outcome) if outcome.code == 0 else ""
                    failures += bool(problems)
                    rows.append(_row(outcome, problems, macs))
                    print(rows[-1], flush=True)
                    _write(args.output, args, rows, failures)
    print(f"wrote {args.output}; {failures} of {len(rows)} runs failed")
    return 1 if failures else 0


def _row(outcome: conformance.Outcome, problems: list[str], macs: str) -> str:
    verdict = "; ".join(problems).replace("|", "/") if problems else "ok"
    if not problems and outcome.code != 0:
        verdict = "ok: documented refusal"
    shipped = outcome.macs.get("shipped", outcome.macs.get("gdws", ""))
    ratio = f"{shipped / outcome.macs['original']:.2f}" if shipped else ""
    return (
        f"| {outcome.arch} | {outcome.fmt} | {outcome.run} | {outcome.code} | {verdict} | "
        f"{macs or 'equal'} | {ratio} | {outcome.seconds:.1f} |"
    )


def _commit() -> str:
    """The checked-out commit (with "+changes" when the tree differs), or "unknown"."""
    import subprocess

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return (head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
            or "unknown")  # fmt: skip


def _write(path: Path, args, rows: list[str], failures: int) -> None:
    lines = [
        "# Conformance: third-party-style CNNs through gdws-export",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{platform.machine()}, one thread; `{' '.join(['benchmarks/conformance.py', *sys.argv[1:]])}`.",
        f"Commit {_commit()}. Architectures, formats and settings: tests/_conformance.py. "
        "Checks: exit 0 (or a refusal docs/cli.md documents), ONNX and engine parity, the "
        "shipped program (`shipped.pt2`; `gdws.pt2` for `--target torch`) against `gdws.onnx`; "
        "MACs: the report's original MACs against FlopCounterMode on the eager model.",
        "",
        f"{len(rows)} runs, {failures} failed.",
        "",
        "| architecture | format | run | exit | checks | MACs | shipped/original MACs | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
