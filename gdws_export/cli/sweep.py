"""`gdws-export sweep`: approximate -> export -> build -> bench -> attack per GDWS setting.

Writes `sweep.json`, `sweep.md` and `sweep.png` (robust accuracy against images/s, the
original as reference, the Pareto front drawn) to --output-dir, and the ONNX files and engines
to its `models/` folder.

Example:
    gdws-export sweep model.pt --betas 0.001 0.01 0.1 --data cifar10 --limit 1000 \\
        --eps 8/255 --steps 10 --output-dir sweep/
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from gdws_export.attacks import AttackConfig
from gdws_export.cli.bench import add_timing_options
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import DEFAULT_BATCH_SIZE, SquareConfig
from gdws_export.harness.report import write_sweep
from gdws_export.harness.speed_report import DEFAULT_BATCH_SIZES, DEFAULT_DURATION_S
from gdws_export.harness.sweep_report import SweepConfig, parse_settings
from gdws_export.pipeline.config import (
    AUTO_CALIB_SAMPLES,
    DEFAULT_CALIB_SAMPLES,
    DEFAULT_HELD_OUT,
    EXPORTERS,
    PRECISIONS,
    SENSITIVITIES,
    TARGETS,
    ExportConfig,
)
from gdws_export.pipeline.outputs import check_output_folder, ensure_output_folder

NAME = "sweep"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the sweep command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        NAME,
        help="measure speed and robustness of several GDWS settings, with a plot",
        description=(
            "For each --betas, --mac-ratios or --time-ratios value: approximate, export, build, "
            "benchmark "
            "(interleaved with the original) and attack; one report with a table, the "
            "Pareto-optimal settings and a plot of robust accuracy against images/s."
        ),
    )
    from gdws_export.cli.export import add_model_options

    add_model_options(parser)  # loaded as `gdws-export export` loads it
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--betas", type=float, nargs="+", help="per-layer error bounds (LEGO)")
    which.add_argument(
        "--mac-ratios", type=float, nargs="+", help="fractions of the conv MACs to keep"
    )
    which.add_argument(
        "--time-ratios", type=float, nargs="+",
        help="fractions of the conv time to keep (each conv timed on ONNX Runtime at the "
             "largest --batch-sizes value)",
    )  # fmt: skip
    parser.add_argument(
        "--data", required=True,
        help="dataset name (fashion-mnist, cifar10...), .npz file, IDX folder or image folder",
    )  # fmt: skip
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--limit", type=int, help="use the first N samples")
    _add_export_options(parser)
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write")
    parser.add_argument("--target", choices=TARGETS, default="ort")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--lowering", default="auto", help="ONNX lowering form (default: auto)")
    parser.add_argument(
        "--exporter", choices=EXPORTERS, default="dynamo",
        help="torch.onnx exporter (default: dynamo)",
    )  # fmt: skip
    parser.add_argument("--timing-cache", help="TensorRT timing cache file (read and updated)")
    _add_attack_options(parser)
    add_timing_options(
        parser.add_argument_group("benchmark"),
        batch_sizes_help="batch sizes to time; the largest is the export batch (default: "
        f"{' '.join(map(str, DEFAULT_BATCH_SIZES))})",
        batch_sizes_default=list(DEFAULT_BATCH_SIZES),
    )
    parser.add_argument(
        "--eval-batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help=f"batch size of attacks and engine inference (default: {DEFAULT_BATCH_SIZE})",
    )  # fmt: skip
    return parser


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    """How each model is exported: `gdws-export export`'s flags of the same names."""
    from gdws_export.cli.export import METHOD_HELP

    gdws = parser.add_argument_group(
        "how each model is exported: as `gdws-export export` with the same flags (see there)"
    )
    gdws.add_argument("--method", default="gdws", metavar="NAME", help=METHOD_HELP)
    gdws.add_argument("--calib", metavar="DATA",
                      help="calibration data (not the evaluation data): alphas, the 1x1 "
                      "refit and --sensitivity auto, as gdws-export --calib")  # fmt: skip
    gdws.add_argument("--calib-samples", type=int, metavar="N",
                      help=f"samples of --calib that calibrate and refit (default "
                      f"{DEFAULT_CALIB_SAMPLES}; {AUTO_CALIB_SAMPLES} with --sensitivity "
                      "auto)")  # fmt: skip
    gdws.add_argument("--held-out-samples", type=int, metavar="N",
                      help="with --sensitivity auto: --calib images after the first "
                      f"--calib-samples that judge the measures (default "
                      f"{DEFAULT_HELD_OUT})")  # fmt: skip
    gdws.add_argument("--alphas", metavar="FILE", help="per-channel alphas file (alphas.pt)")
    gdws.add_argument("--sensitivity", choices=SENSITIVITIES,
                      help="how errors are weighed (default: auto with --calib, relative "
                      "without)")  # fmt: skip
    gdws.add_argument("--alpha-eps", type=parse_number, metavar="EPS",
                      help="radius of the PGD attacks on --calib data (default: the "
                      "checkpoint's training eps, else 8/255)")  # fmt: skip
    gdws.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                      help="refit the 1x1 convs on --calib (default: with --calib)")  # fmt: skip
    gdws.add_argument("--exclude", action="append", default=[], metavar="LAYER",
                      help="keep this conv exact (a name or pattern); repeat for more")  # fmt: skip
    gdws.add_argument("--max-layer-error", type=float, metavar="E",
                      help="cap each layer's share of the error under a budget, "
                      "in (0, 1]")  # fmt: skip


def _add_attack_options(parser: argparse.ArgumentParser) -> None:
    """The white-box attack on each PyTorch model, replayed on its engine, and Square."""
    attack = parser.add_argument_group("attack (white-box on PyTorch, replayed on the engine)")
    attack.add_argument("--attack", choices=("pgd", "fgsm"), default="pgd")
    attack.add_argument("--norm", choices=("linf", "l2"), default="linf")
    attack.add_argument(
        "--eps", type=parse_number, default=8 / 255, help="radius, e.g. 8/255 (default)"
    )
    attack.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    attack.add_argument(
        "--step-size", type=parse_number, help="PGD step (default: 2.5 * eps / steps)"
    )
    attack.add_argument("--restarts", type=int, default=1, help="PGD restarts (default: 1)")
    attack.add_argument(
        "--no-random-start", action="store_true", help="start PGD from the clean image"
    )
    attack.add_argument("--seed", type=int, default=0, help="attack seed (default: 0)")
    attack.add_argument(
        "--square-queries", type=int, default=0,
        help="also run the Square Attack (L-inf, same eps) on each engine with this budget",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the sweep through the export pipeline, write sweep.json / .md / .png."""
    from gdws_export.harness.data import load_dataset
    from gdws_export.studies.sweep import sweep

    config = config_from_args(args)  # settings first: bad flags fail before any loading
    export = export_config_from_args(args)
    check_output_folder(args.output_dir, "--output-dir")

    def data(shape: tuple[int, ...], classes: int):
        """Read once the model says its shape; the output folder is made once both loaded."""
        images = load_dataset(args.data, split=args.split, limit=args.limit,
                              num_classes=classes, input_shape=shape)  # fmt: skip
        ensure_output_folder(args.output_dir, "sweep", "--output-dir")
        return images

    report = sweep(export, config, data, work_dir=args.output_dir / "models",
                   data_name=_describe_data(args.data, args.split, args.limit))  # fmt: skip
    paths = write_sweep(report, args.output_dir)
    for note in report.notes:  # each export's warnings, as `export` prints them
        print(f"gdws-export: warning: {note}", file=sys.stderr)
    print(report.table())
    print(f"Pareto-optimal: {', '.join(report.pareto_settings)}")
    print(f"Wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")
    return 0


def export_config_from_args(args: argparse.Namespace) -> ExportConfig:
    """How every model of the sweep is exported: `gdws-export export`'s settings for the same
    flags (its budget left out: each setting gives one)."""
    from gdws_export.cli.export import calib_settings, model_settings

    return ExportConfig(
        **model_settings(args), **calib_settings(args), output=os.fspath(args.output_dir),
        method=args.method, alphas=args.alphas, sensitivity=args.sensitivity,
        alpha_eps=args.alpha_eps,
        refit=args.refit,
        exclude=tuple(args.exclude or ()), max_layer_error=args.max_layer_error,
        target=args.target, precision=args.precision, threads=args.threads,
        lowering=args.lowering, exporter=args.exporter, timing_cache=args.timing_cache,
        batch=max(args.batch_sizes), seed=args.seed,
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The SweepConfig the command line asks for (validated)."""
    if args.square_queries < 0:
        raise InvalidInputError(f"--square-queries must be >= 0, got {args.square_queries}")
    duration = args.duration
    if duration is None and args.iterations is None:
        duration = DEFAULT_DURATION_S
    white_box = AttackConfig(
        args.attack, norm=args.norm, eps=args.eps, step_size=args.step_size, steps=args.steps,
        restarts=args.restarts, random_start=not args.no_random_start, seed=args.seed,
    )  # fmt: skip
    square = None
    if args.square_queries:
        if args.norm != "linf":
            raise InvalidInputError("--square-queries: the Square Attack here is L-inf only")
        square = SquareConfig(eps=args.eps, queries=args.square_queries, seed=args.seed)
    return SweepConfig(
        settings=parse_settings(args.betas, args.mac_ratios, args.time_ratios),
        attacks=(white_box,),
        square=square,
        batch_sizes=tuple(args.batch_sizes),
        duration_s=duration,
        iterations=args.iterations,
        warmup_s=args.warmup,
        eval_batch_size=args.eval_batch_size,
    )


def _describe_data(spec: str, split: str, limit: int | None) -> str:
    """'cifar10 (test), first 1000 samples'; files and folders have no split to name."""
    from gdws_export.harness.data import NAMED_DATASETS

    named = f" ({split})" if str(spec).lower() in NAMED_DATASETS else ""
    return f"{spec}{named}" + (f", first {limit} samples" if limit else ", all samples")


def parse_number(text: str) -> float:
    """A float or a fraction such as '8/255' (argparse type)."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value
