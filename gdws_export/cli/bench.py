"""`gdws-export bench`: time an ONNX model or engine, optionally against a reference, interleaved.

Example:
    gdws-export bench gdws.onnx --reference original.onnx --batch-sizes 1 64 --threads 4 \\
        --output bench.json --markdown bench.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gdws_export.harness.report import render_markdown, write_json, write_markdown
from gdws_export.harness.runners import load_runners_alike
from gdws_export.harness.speed import benchmark
from gdws_export.harness.speed_report import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_DURATION_S,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP_S,
)
from gdws_export.pipeline.outputs import check_output_file

NAME = "bench"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the bench command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        NAME,
        help="time an ONNX model, ONNX Runtime settings file or TensorRT engine",
        description=(
            "Latency percentiles (p50/p90/p95/p99) and images/s per batch size; with "
            "--reference, both models are timed in the same run, interleaved, and the "
            "speed-up is reported. TensorRT engines also report GPU compute time."
        ),
    )
    parser.add_argument(
        "model", type=Path, help=".onnx, ONNX Runtime settings .json, or .engine / .plan"
    )
    parser.add_argument(
        "--reference", type=Path, help="a second model timed alongside (e.g. the original)"
    )
    add_timing_options(
        parser,
        batch_sizes_help=f"batch sizes to time (default: "
        f"{' '.join(map(str, DEFAULT_BATCH_SIZES))}, or the one batch a model exported with a "
        "fixed batch takes)",
    )
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS,
        help=f"interleaved rounds (default: {DEFAULT_ROUNDS})",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int,
        help="CPU intra-op threads of every model timed (default: the count the settings files "
        "record, e.g. an export's 1; ONNX Runtime's default when none does)",
    )  # fmt: skip
    parser.add_argument(
        "--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
        help="image shape, for models with dynamic image sizes",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")
    return parser


def add_timing_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    batch_sizes_help: str,
    batch_sizes_default: list[int] | None = None,
) -> None:
    """The timing flags `bench` and `sweep` share: --batch-sizes, --duration, --iterations,
    --warmup."""
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes_default,
                        help=batch_sizes_help)  # fmt: skip
    parser.add_argument(
        "--duration", type=float, default=None,
        help=f"minimum timed seconds per model and batch (default: {DEFAULT_DURATION_S:g} "
        "unless --iterations is given)",
    )  # fmt: skip
    parser.add_argument(
        "--iterations", type=int, help="minimum timed runs (exactly this many without --duration)"
    )
    parser.add_argument(
        "--warmup", type=float, default=DEFAULT_WARMUP_S,
        help=f"warm-up seconds per model and batch (default: {DEFAULT_WARMUP_S:g})",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the Markdown report, write the files asked for."""
    inputs = [p for p in (args.model, args.reference) if p is not None]
    for option, path in (("--output", args.output), ("--markdown", args.markdown)):
        if path is not None:  # before any timing: a bad path fails at once
            check_output_file(path, option, protected=inputs)
    duration = args.duration
    if duration is None and args.iterations is None:
        duration = DEFAULT_DURATION_S
    paths = [args.reference, args.model] if args.reference is not None else [args.model]
    runners = {}
    for path, runner in zip(paths, load_runners_alike(paths, threads=args.threads), strict=True):
        runners[_name(path, set(runners))] = runner
    report = benchmark(
        runners,
        batch_sizes=args.batch_sizes,
        duration_s=duration,
        iterations=args.iterations,
        warmup_s=args.warmup,
        rounds=args.rounds,
        reference=next(iter(runners)) if args.reference is not None else None,
        input_shape=args.input_shape,
        seed=args.seed,
    )
    if args.output is not None:
        write_json(report, args.output)
    if args.markdown is not None:
        write_markdown(report, args.markdown)
    print(render_markdown(report), end="")
    return 0


def _name(path: Path, taken: set[str]) -> str:
    """A runner's name: its file name, made unique."""
    name, index = path.name, 2
    while name in taken:
        name, index = f"{path.name} ({index})", index + 1
    return name
