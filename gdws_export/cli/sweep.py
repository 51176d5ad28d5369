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
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gdws_export.attacks import AttackConfig
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.harness.accuracy import DEFAULT_BATCH_SIZE, SquareConfig
from gdws_export.harness.measure_choice import MIN_HELD_OUT
from gdws_export.harness.report import write_sweep
from gdws_export.harness.speed_report import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_DURATION_S,
    DEFAULT_WARMUP_S,
)
from gdws_export.harness.sweep import sweep
from gdws_export.harness.sweep_report import SweepConfig, parse_settings
from gdws_export.pipeline.config import AUTO_CALIB_SAMPLES, DEFAULT_CALIB_SAMPLES, DEFAULT_HELD_OUT
from gdws_export.pipeline.outputs import check_output_folder, ensure_output_folder

if TYPE_CHECKING:
    from torch import nn

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
    parser.add_argument(
        "--alphas", type=Path,
        help="alphas file (save_alphas, or an export's alphas.pt); default: as gdws-export's "
        "default --sensitivity: with --calib, auto (see --held-out-samples), else relative "
        "alphas from the weights",
    )  # fmt: skip
    parser.add_argument(
        "--calib", metavar="DATA",
        help="calibration images (not the evaluation data; train split of a named dataset): "
        "every GDWS model's 1x1 convs are refit on them, clean and PGD at twice --eps, as "
        "gdws-export --calib does; default: no refit",
    )  # fmt: skip
    parser.add_argument(
        "--calib-samples", type=int, default=None, metavar="N",
        help=f"samples of --calib used to calibrate and refit (default {AUTO_CALIB_SAMPLES} "
        f"when --held-out-samples follow them, else {DEFAULT_CALIB_SAMPLES})",
    )  # fmt: skip
    parser.add_argument(
        "--held-out-samples", type=int, default=DEFAULT_HELD_OUT, metavar="N",
        help="with --calib and no --alphas, gdws-export's --sensitivity auto per MAC or time "
        "budget: the model is built with unweighted and with calibrated alphas, refit "
        "included, and the more robust on these --calib images after the --calib-samples "
        f"ones (PGD-10 at --eps) ships (default {DEFAULT_HELD_OUT}; 0: unweighted, no choice)",
    )  # fmt: skip
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write")
    parser.add_argument("--target", choices=("ort", "trt", "torch"), default="ort")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--lowering", default="auto", help="ONNX lowering form (default: auto)")
    parser.add_argument(
        "--exporter", choices=("dynamo", "legacy"), default="dynamo",
        help="torch.onnx exporter (default: dynamo)",
    )  # fmt: skip
    parser.add_argument("--timing-cache", help="TensorRT timing cache file (read and updated)")
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
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    bench.add_argument(
        "--duration", type=float, default=None,
        help=f"minimum timed seconds per model and batch (default: {DEFAULT_DURATION_S:g} "
        "unless --iterations is given)",
    )  # fmt: skip
    bench.add_argument("--iterations", type=int, help="minimum timed runs per model and batch")
    bench.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S)
    parser.add_argument(
        "--eval-batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help=f"batch size of attacks and engine inference (default: {DEFAULT_BATCH_SIZE})",
    )  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model and data, run the sweep, write sweep.json / .md / .png."""
    from gdws_export.gdws.activations import relative_gains
    from gdws_export.gdws.calibration import calibrated_gains
    from gdws_export.gdws.sensitivity import load_alphas, load_input_moments
    from gdws_export.harness.data import load_dataset
    from gdws_export.pipeline.model import match_alpha_names

    config = config_from_args(args)  # settings first: bad flags fail before any loading
    check_output_folder(args.output_dir, "--output-dir")
    model, shape, num_classes = load_model_from_args(args)
    x, y = load_dataset(
        args.data, split=args.split, limit=args.limit, num_classes=num_classes,
        input_shape=shape,
    )  # fmt: skip
    choose = (args.calib is not None and args.alphas is None and args.held_out_samples > 0
              and any(s.beta is None for s in config.settings))  # fmt: skip
    calibration = held_out = None
    if args.calib is not None:
        samples = args.calib_samples or (AUTO_CALIB_SAMPLES if choose else DEFAULT_CALIB_SAMPLES)
        x_calib, y_calib = load_dataset(
            args.calib, split="train", limit=samples + (args.held_out_samples if choose else 0),
            num_classes=num_classes, input_shape=shape,
        )  # fmt: skip
        calibration = (x_calib[:samples], y_calib[:samples])
        if choose:
            held_out = (x_calib[samples:], y_calib[samples:])
        if choose and len(held_out[1]) < MIN_HELD_OUT:  # as gdws-export: unweighted, warned
            print(f"gdws-export: warning: --calib {args.calib} has {len(held_out[1])} images "
                  f"after the first {samples}, too few to judge the measures (at least "
                  f"{MIN_HELD_OUT}); every model is unweighted", file=sys.stderr)  # fmt: skip
            choose, held_out = False, None
    alphas = moments = measures = None
    if args.alphas is not None:
        alphas = match_alpha_names(load_alphas(args.alphas), model, args.alphas)
        moments = load_input_moments(args.alphas)
        if moments is not None:
            moments = match_alpha_names(moments, model, args.alphas)
    elif choose:  # gdws-export's default --sensitivity auto
        x_fit, y_fit = calibration
        measures = {"none": None, "calibrated": calibrated_gains(
            model, (x_fit, y_fit), eps=args.eps, step_size=args.eps / 4, samples=len(y_fit),
            norm=args.norm, seed=args.seed,
        )}  # fmt: skip
    elif args.calib is None:  # without the refit, gdws-export's default is relative
        alphas = relative_gains(model)
    ensure_output_folder(args.output_dir, "sweep", "--output-dir")
    report = sweep(
        model, config, (x, y), work_dir=args.output_dir / "models", alphas=alphas,
        input_moments=moments, refit_data=calibration, measures=measures, held_out=held_out,
        data_name=_describe_data(args.data, args.split, len(y)),
    )  # fmt: skip
    paths = write_sweep(report, args.output_dir)
    print(report.table())
    print(f"Pareto-optimal: {', '.join(report.pareto_settings)}")
    print(f"Wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")
    return 0


def load_model_from_args(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...], int]:
    """(model, (C, H, W), classes) of the model options, loaded as `export` loads them
    (--mean/--std baked in).

    Raises:
        UnsupportedModelError: a program whose batch is fixed (the sweep runs batches).
    """
    from gdws_export.cli.export import model_settings
    from gdws_export.pipeline.config import ExportConfig
    from gdws_export.pipeline.model import check_forward, load_configured_model, prepare_model

    settings = ExportConfig(**model_settings(args)).resolved()
    loaded = load_configured_model(settings)
    if loaded.fixed_batch is not None:
        raise UnsupportedModelError(
            f"{loaded.path} fixes the batch size to {loaded.fixed_batch}; the sweep runs "
            "batches of several sizes: export it again with a dynamic batch"
        )
    model, shape, _ = prepare_model(loaded, settings)
    return model, tuple(shape), check_forward(model, shape, None)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The SweepConfig the command line asks for (validated)."""
    if args.square_queries < 0:
        raise InvalidInputError(f"--square-queries must be >= 0, got {args.square_queries}")
    if args.calib_samples is not None and args.calib is None:
        raise InvalidInputError("--calib-samples needs --calib (the data it counts samples of)")
    if args.calib_samples is not None and args.calib_samples < 1:
        raise InvalidInputError(f"--calib-samples must be >= 1, got {args.calib_samples}")
    if args.held_out_samples < 0:
        raise InvalidInputError(f"--held-out-samples must be >= 0, got {args.held_out_samples}")
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
        target=args.target,
        precision=args.precision,
        threads=args.threads,
        lowering=args.lowering,
        exporter=args.exporter,
        timing_cache=args.timing_cache,
        attacks=(white_box,),
        square=square,
        batch_sizes=tuple(args.batch_sizes),
        duration_s=duration,
        iterations=args.iterations,
        warmup_s=args.warmup,
        eval_batch_size=args.eval_batch_size,
    )


def _describe_data(spec: str, split: str, samples: int) -> str:
    """'cifar10 (test), 1000 samples'; files and folders have no split to name."""
    from gdws_export.harness.data import NAMED_DATASETS

    named = f" ({split})" if str(spec).lower() in NAMED_DATASETS else ""
    return f"{spec}{named}, {samples} samples"


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
