"""`gdws-export [export] MODEL [options]`: one model file to a directory ready for serving."""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from typing import Any, TextIO

from gdws_export.errors import InvalidInputError
from gdws_export.limits import MAX_BATCH
from gdws_export.pipeline.config import (
    AUTO_CALIB_SAMPLES,
    DEFAULT_CALIB_SAMPLES,
    DEFAULT_HELD_OUT,
    DEFAULT_MAC_RATIO,
    DEFAULT_MAX_ROBUST_DROP,
    EXPORTERS,
    SENSITIVITIES,
    TARGETS,
    ExportConfig,
    parse_input_shape,
)

LOWERINGS = "auto, gather, uniform, slots, fold, fold-S (S = 2, 3, ...), dense"

DESCRIPTION = f"""\
Replace the KxK convs of a trained CNN by GDWS convs (no retraining), export the original and
the GDWS model to ONNX, and build an ONNX Runtime model or a TensorRT engine, with a report.

  gdws-export model.pt --target ort                 ONNX Runtime, FP32
  gdws-export model.pt --target trt --fp16          TensorRT engine, FP16
  gdws-export weights.pt --arch resnet18 --num-classes 10 --calib cifar10 --int8 --target trt
  gdws-export model.pt --dry-run                    print the per-layer plan, build nothing

MODEL is detected from its content: a gdws-export checkpoint; a state_dict (or a checkpoint
dict holding one) with --arch; a TorchScript archive (torch.jit.save); a torch.export program
(.pt2); a whole pickled nn.Module, only with --trust-pickle, since loading it runs code from
the file.

How much to approximate: --beta B (the paper's per-layer error bound), --mac-ratio R (the
replaceable convs keep at most R of their MACs) or --time-ratio T (they keep at most T of
their time, measured layer by layer on ONNX Runtime at --batch and --threads, which puts the
kernels where they buy speed). With none of them and --calib DATA, the export searches: it
ships the smallest MAC ratio whose robust accuracy on held-out --calib images stays within
--max-robust-drop points (default {DEFAULT_MAX_ROBUST_DROP}) of the original's, judged paired;
with neither, --mac-ratio {DEFAULT_MAC_RATIO}.
With --calib DATA the 1x1 convs are refit on it, and --sensitivity auto (the default then)
builds the model with each of the none and calibrated alphas and ships the one that keeps
the most held-out --calib images right under PGD (the first {AUTO_CALIB_SAMPLES} images fit,
the next {DEFAULT_HELD_OUT} judge); without data, alphas come from --alphas FILE or the weights.

Outputs in the output directory: original.onnx, gdws.onnx, the engine with its settings
(gdws.<precision>.engine for TensorRT, gdws.<precision>.ort.onnx for ONNX Runtime, gdws.pt2
for PyTorch), alphas.pt when computed, report.json and report.md. Everything is written
under a temporary name and renamed at the end: a failed or interrupted run (Ctrl-C,
SIGTERM) leaves nothing behind. --force replaces only a folder an earlier gdws-export run
wrote (marked by a .gdws-export file), never the current folder or one holding the model.

Other commands, when installed: gdws-export bench --help, gdws-export sweep --help."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `export` and its options."""
    from gdws_export.cli import EXIT_CODES, PROG

    parser = subparsers.add_parser(
        "export",
        prog=PROG,
        usage=f"{PROG} [export] MODEL [options]",
        help="export a model (the default command)",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    _gdws_options(parser)
    _export_options(parser)
    _engine_options(parser)
    _output_options(parser)
    _general_options(parser)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The "model" options: which file and how to load it (`export` and `sweep` share them;
    `model_settings` reads them back)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "model",
        metavar="MODEL",
        help="the model file: a gdws-export checkpoint, a state_dict (with --arch), a "
        "TorchScript archive, a torch.export program (.pt2), or a pickled nn.Module "
        "(with --trust-pickle)",
    )
    model.add_argument(
        "--arch",
        metavar="NAME",
        help="architecture of a state_dict, from the "
        "models registry (lenet, resnet18, preact_resnet18, vgg16_bn, wrn28_4, ...)",
    )
    model.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classes of --arch (default: the architecture's, 10)",
    )
    model.add_argument(
        "--arch-kwargs",
        type=_json_object,
        metavar="JSON",
        help="other arguments of --arch, e.g. '{\"width\": 32}'",
    )
    model.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a whole pickled "
        "nn.Module; loading it RUNS CODE FROM THE FILE: only for files you trust",
    )
    model.add_argument(
        "--input-shape",
        type=_shape,
        metavar="NxCxHxW",
        help="input shape, e.g. 1x3x32x32 (default: what the file or architecture records)",
    )
    model.add_argument(
        "--mean",
        type=_floats,
        metavar="M[,M,...]",
        help="per-channel mean to bake into the graph, so engines take [0, 1] images (with --std)",
    )
    model.add_argument("--std", type=_floats, metavar="S[,S,...]", help="per-channel std")


def _gdws_options(parser: argparse.ArgumentParser) -> None:
    """The "GDWS approximation" options."""
    gdws = parser.add_argument_group("GDWS approximation")
    how = gdws.add_mutually_exclusive_group()
    how.add_argument(
        "--beta",
        type=float,
        metavar="B",
        help="per-layer weighted error bound (>= 0; the paper's setting)",
    )
    how.add_argument(
        "--mac-ratio",
        type=float,
        metavar="R",
        help="the replaceable convs keep at most this fraction of their MACs, in (0, 1] "
        f"(default: searched with --calib, else {DEFAULT_MAC_RATIO})",
    )
    how.add_argument(
        "--time-ratio",
        type=float,
        metavar="T",
        help="the replaceable convs keep at most this fraction of their time, measured per "
        "layer on ONNX Runtime at --batch and --threads, in (0, 1]",
    )
    how.add_argument(
        "--no-gdws",
        dest="gdws",
        action="store_false",
        help="export the original model, for comparison",
    )
    gdws.add_argument(
        "--max-robust-drop",
        type=float,
        metavar="P",
        help="search the MAC ratio: the smallest whose robust accuracy on held-out --calib "
        "images is within P points of the original's (default "
        f"{DEFAULT_MAX_ROBUST_DROP} with --calib and no --beta/--mac-ratio/--time-ratio)",
    )
    gdws.add_argument(
        "--min-speedup",
        type=float,
        metavar="S",
        help="search the other way: the most robust MAC ratio whose graph runs at least S "
        "times the original's speed on ONNX Runtime at --batch and --threads (needs --calib, "
        "--target ort)",
    )
    gdws.add_argument(
        "--max-layer-error",
        type=float,
        metavar="E",
        help="no layer keeps more than this share of its (weighted) error under the budget, "
        "in (0, 1]; default 0.35 with --time-ratio (a time price otherwise piles the error "
        "into a few layers), none with --mac-ratio",
    )
    gdws.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="LAYER",
        help="keep this conv exact (not approximated): a module name or shell-style pattern "
        "(features.3, 'layer4.*'); repeat for more. The budget then covers the other convs",
    )
    gdws.add_argument(
        "--alphas",
        metavar="FILE",
        help="per-channel alphas (from save_alphas or an earlier run's alphas.pt)",
    )
    gdws.add_argument(
        "--calib",
        metavar="DATA",
        help="data for alphas, INT8 calibration and "
        "parity checks: .npz (x, y), image folder, IDX folder or a dataset name "
        "(mnist, fashion-mnist, cifar10, ...; train split)",
    )
    gdws.add_argument(
        "--calib-samples",
        type=int,
        default=None,
        metavar="N",
        help=f"samples of --calib used for alphas, the refit and INT8 calibration (default "
        f"{DEFAULT_CALIB_SAMPLES}; {AUTO_CALIB_SAMPLES} with --sensitivity auto)",
    )
    gdws.add_argument(
        "--held-out-samples",
        type=int,
        default=None,
        metavar="N",
        help="with --sensitivity auto: images of --calib after the first --calib-samples that "
        f"judge the measures (default {DEFAULT_HELD_OUT})",
    )
    gdws.add_argument(
        "--alpha-eps",
        type=_fraction,
        default=None,
        metavar="EPS",
        help="L-inf radius of the PGD attacks on --calib data (alphas, the refit, --sensitivity "
        "auto); default: the eps a gdws-export checkpoint was adversarially trained at, else "
        "8/255",
    )
    gdws.add_argument(
        "--sensitivity",
        choices=SENSITIVITIES,
        default=None,
        help="how errors are weighed: none (unweighted) or relative (each layer's error "
        "relative to its weight energy), both without data, or on --calib data: activation "
        "(activation-aware SVD in the metric of each conv's inputs on clean and PGD images), "
        "calibrated (per-layer scales measured on adversarial inputs) or noise-gains (the "
        "paper's alphas), or auto (each of none and calibrated, the more robust "
        "on held-out --calib images ships); default: auto with the 1x1 refit (none under "
        "--beta or --alphas), relative without",
    )

    gdws.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refit each GDWS layer's 1x1 conv by least squares to the original conv's outputs "
        "on --calib data (clean and PGD images); default: on when --calib is given",
    )


def _export_options(parser: argparse.ArgumentParser) -> None:
    """The "ONNX export" options."""
    export = parser.add_argument_group("ONNX export")
    export.add_argument(
        "--lowering",
        default="auto",
        metavar="FORM",
        help="how GDWS convs become "
        f"ONNX ops: {LOWERINGS} (default auto: the fastest per layer, timed on "
        "ONNX Runtime)",
    )
    export.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="dynamo",
        help="torch.onnx exporter (default dynamo)",
    )
    export.add_argument(
        "--opset",
        type=int,
        metavar="N",
        help="ONNX opset (default 18); one the exporter or ONNX Runtime does not support is "
        "refused, naming the supported range",
    )
    batch_axis = export.add_mutually_exclusive_group()
    batch_axis.add_argument(
        "--dynamic-batch",
        dest="dynamic_batch",
        action="store_true",
        default=True,
        help="symbolic batch axis (default)",
    )
    batch_axis.add_argument(
        "--static",
        dest="dynamic_batch",
        action="store_false",
        help="fix the batch axis to --batch (default 1)",
    )


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """The "engine" options."""
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--target",
        choices=TARGETS,
        default="ort",
        help="ort: ONNX Runtime; trt: TensorRT; torch: PyTorch running a torch.export program, "
        "for machines with neither (default ort)",
    )
    precision = engine.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16",
        dest="precision",
        action="store_const",
        const="fp16",
        default="fp32",
        help="FP16 engine (FP32 inputs and outputs)",
    )
    precision.add_argument(
        "--int8",
        dest="precision",
        action="store_const",
        const="int8",
        help="INT8 engine, calibrated on --calib",
    )
    engine.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="largest and optimal batch of the "
        f"engine profile and Triton's max_batch_size, at most {MAX_BATCH} (default: profile "
        "1..64)",
    )
    engine.add_argument(
        "--workspace",
        dest="workspace_mib",
        type=int,
        metavar="MiB",
        help="TensorRT workspace limit (default: TensorRT's)",
    )
    engine.add_argument(
        "--timing-cache",
        metavar="FILE",
        help="TensorRT timing cache to reuse and extend (one per GPU model)",
    )
    engine.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="ONNX Runtime threads (default: the cores available)",
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    """The "output" options."""
    output = parser.add_argument_group("output")
    output.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="output directory (default <model name>-<target>-<precision>)",
    )
    output.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output directory (and Triton model) that an earlier "
        "gdws-export run wrote (it holds a .gdws-export marker file); never another folder, "
        "the current one or one holding the model",
    )
    output.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton Inference "
        "Server model (DIR/<name>/config.pbtxt, DIR/<name>/1/model.*)",
    )
    output.add_argument(
        "--triton-name",
        metavar="NAME",
        help="model name in --triton-repo (default: the model file's name)",
    )
    output.add_argument(
        "--dry-run",
        action="store_true",
        help="print the per-layer plan (kernels, MACs, lowering) and stop; writes nothing",
    )


def _general_options(parser: argparse.ArgumentParser) -> None:
    """The "general" options."""
    general = parser.add_argument_group("general")
    general.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    loud = general.add_mutually_exclusive_group()
    loud.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="stage lines even when not on a terminal, library warnings, tracebacks on errors",
    )
    loud.add_argument(
        "-q", "--quiet", action="store_true", help="print errors only (and the --dry-run plan)"
    )
    from gdws_export.cli import version_text

    general.add_argument("--version", action="version", version=version_text())


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ExportConfig fields the "model" options set (see `add_model_options`)."""
    return dict(
        model=str(args.model), arch=args.arch, num_classes=args.num_classes,
        arch_kwargs=args.arch_kwargs, trust_pickle=args.trust_pickle,
        input_shape=args.input_shape, mean=args.mean, std=args.std,
    )  # fmt: skip


def calib_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ExportConfig fields of --calib, --calib-samples and --held-out-samples."""
    for option, value in (("--calib-samples", args.calib_samples),
                          ("--held-out-samples", args.held_out_samples)):  # fmt: skip
        if value is not None and args.calib is None:
            raise InvalidInputError(f"{option} needs --calib (the data it counts samples of)")
    held_out = DEFAULT_HELD_OUT if args.held_out_samples is None else args.held_out_samples
    return dict(calib=args.calib, calib_samples=args.calib_samples, held_out_samples=held_out)


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    """The ExportConfig for parsed arguments (validated later by `resolved()`)."""
    return ExportConfig(
        **model_settings(args), output=args.output, target=args.target,
        precision=args.precision, gdws=args.gdws, beta=args.beta, mac_ratio=args.mac_ratio,
        time_ratio=args.time_ratio, max_layer_error=args.max_layer_error,
        max_robust_drop=args.max_robust_drop, min_speedup=args.min_speedup,
        exclude=tuple(args.exclude),
        alphas=args.alphas, **calib_settings(args),
        alpha_eps=args.alpha_eps, sensitivity=args.sensitivity, refit=args.refit,
        lowering=args.lowering,
        exporter=args.exporter,
        opset=args.opset, dynamic_batch=args.dynamic_batch, batch=args.batch,
        workspace_mib=args.workspace_mib, timing_cache=args.timing_cache, threads=args.threads,
        triton_repo=args.triton_repo, triton_name=args.triton_name, force=args.force,
        dry_run=args.dry_run, seed=args.seed,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Export; prints where the outputs are (stdout) and warnings (stderr) unless -q."""
    from gdws_export.cli.progress import StageLine, summary
    from gdws_export.pipeline.run import run_export

    config = config_from_args(args)
    tty = _tty(sys.stderr)
    line = StageLine(sys.stderr, enabled=not args.quiet and (args.verbose or tty), bars=tty)
    report = run_export(config, progress=line, show_bars=line.enabled)
    if not args.quiet:
        for warning in report.warnings:
            print(f"gdws-export: warning: {warning}", file=sys.stderr)
    if args.dry_run or not args.quiet:
        print(summary(report))
    return 0


def _tty(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def _shape(text: str) -> tuple[int, ...]:
    try:
        return parse_input_shape(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--input-shape ")) from exc


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from exc


def _fraction(text: str) -> float:
    """'0.03' or '8/255' -> float."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.03 or 8/255)") from exc


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'{text!r} is not a JSON object ({{"name": value}})')
    return value
