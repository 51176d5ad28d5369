"""`gdws-export [export] MODEL [options]`: one model file to a directory ready for serving."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from gdws_export.cli.model_options import add_model_options, fraction, model_settings
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
)

LOWERINGS = "auto, gather, uniform, slots, fold, fold-S (S = 2, 3, ...), dense"
METHOD_HELP = (
    "compression method: gdws (default), dws, l1-prune, tucker2, lowrank or kronecker (Linear "
    "layers; --mac-ratio is then their parameters' fraction), or methods replacing different "
    "layer types joined by commas (gdws,kronecker); see docs/methods.md"
)

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
ships the fewest MACs (a MAC ratio, some layers perhaps kept exact) whose robust accuracy on
held-out --calib images stays within --max-robust-drop points (default
{DEFAULT_MAX_ROBUST_DROP}) of the original's, judged paired;
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
    groups = {"GDWS approximation": (_budget_options, _data_options),
              "ONNX export": (_export_options,), "engine": (_engine_options,),
              "output": (_output_options,), "general": (_general_options,)}  # fmt: skip
    for title, adders in groups.items():
        group = parser.add_argument_group(title)
        for add in adders:
            add(group)
    return parser


def _budget_options(gdws: argparse._ArgumentGroup) -> None:
    """GDWS approximation, how much: the method, a budget, a search or none (--no-gdws), and
    which convs."""
    gdws.add_argument("--method", default="gdws", metavar="NAME", help=METHOD_HELP)
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


def _data_options(gdws: argparse._ArgumentGroup) -> None:
    """GDWS approximation, what errors are weighed by and the data measuring them: alphas,
    --calib, the measure, the refit."""
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
        type=fraction,
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


def _export_options(export: argparse._ArgumentGroup) -> None:
    """The "ONNX export" options."""
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


def _engine_options(engine: argparse._ArgumentGroup) -> None:
    """The "engine" options."""
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


def _output_options(output: argparse._ArgumentGroup) -> None:
    """The "output" options."""
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


def _general_options(general: argparse._ArgumentGroup) -> None:
    """The "general" options."""
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
        precision=args.precision, gdws=args.gdws, method=args.method, beta=args.beta,
        mac_ratio=args.mac_ratio,
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
