"""The GDWS paper table, measured here: for every robust checkpoint, the original, GDWS under
several sensitivity measures at several MAC ratios, and three baselines (plain
depthwise-separable convs, L1 filter pruning, input-channel pruning), all through the same
export -> build -> benchmark -> evaluate path on one runtime (`--target`: ONNX Runtime CPU by
default, TensorRT or PyTorch where present); plus a speed-only table of the full-size CIFAR
architectures (ONNX Runtime CPU).

Per checkpoint:

1. sensitivities (`paper_table_variants.compute_sensitivities`) on training images;
2. the models (`build_variants`): GDWS with each measure at each `--ratios` (for the measures
   in `--refit` also with the 1x1 convs refit on the same training images), GDWS on a time
   budget at each `--time-ratios` (layer costs measured at `--auto-batch`); the comparison
   rows (each measure without the refit, the baselines) at the smallest ratio only, the refit
   rows at every ratio (`--all-comparison-ratios`: everything at each); `--light` checkpoints
   at their own ratio with the export default's measures and fewer images (`checkpoint_plan`);
   the convs `--keep-exact` names for a checkpoint stay exact in its GDWS and dws rows;
3. each model exported with `export_onnx(lowering="auto", original=model)` and built for ONNX
   Runtime; layers where the original conv ran faster ship it, and are put back in the PyTorch
   model too, so the model attacked is the model shipped. `--target trt` builds TensorRT
   engines from the reference lowering ("gather": auto times on ONNX Runtime CPU, which says
   nothing about TensorRT); `--target torch` runs each PyTorch model as a torch.export program;
4. all graphs timed in one interleaved `benchmark` at batch 1 and 32 (the original is the
   reference);
5. `evaluate_accuracy`: clean and PGD-100 accuracy on PyTorch (each model's `attack_copy`:
   GDWS layers as the dense convs they compute, BatchNorms folded into the convs before them;
   the same function, faster to attack; images it gets wrong clean are not attacked, they
   cannot count as robust), replayed on the ONNX Runtime graphs.
   A model that ships no GDWS layer is the original and is not attacked again.

Writes benchmarks/results/<runtime>-<date>.{md,json,png} (`--out` to change), <runtime> being
ort-cpu, trt-<precision> or torch-<device>-<precision>.

Threads: every ONNX Runtime session (timing, auto lowering, layer costs, replay) runs
`--threads` intra-op threads, 1 by default: on the 2-vCPU machines here two-thread sessions of
the same GDWS graph ran 0.8x to 1.8x the original's speed from one fresh session to the next
(results/session-noise-2026-12-03.md), one-thread sessions within a few %, and one session per
core is how a small CPU serves batch-32 throughput. PyTorch (sensitivities, refit, attacks)
uses `--torch-threads`, all cores by default.

Per MAC ratio the table also names the refit row `gdws-export --calib`'s default
(`--sensitivity auto`) would ship, chosen as the export chooses it on the `--held-out-samples`
training images after the calibration ones (`export_default_choices`).

A row with committed `confirm_rows.py` results (benchmarks/results/*confirm*.json: the same
attack on 1000 or more images, paired, the same convs kept exact) is judged by those on the
most images, the worst of them, rather than by this table's 100 or 200 images; a verdict met
without one is provisional. `paper_table_report.py <table>.json` re-reads them into a table
written before they existed.

Run (full: 21.0 and 22.1 minutes in two runs on the 2-core Intel machine of
results/ort-cpu-2026-12-06-intel-attack-copy and its -rerun: five checkpoints, ratios 0.25
and 0.2 on the width-16 VGG-16 and PreActResNet-18, one ratio on the three light ones, the
comparison rows at the smallest ratio; this machine's slow phases add up to 15 %):
    PYTHONPATH=. python benchmarks/paper_table.py
CI-sized (one checkpoint, tiny samples, short timings; about a minute):
    PYTHONPATH=. python benchmarks/paper_table.py --quick --out /tmp/paper-table
On a GPU machine (TensorRT FP16; or PyTorch CUDA with --target torch):
    PYTHONPATH=. python benchmarks/paper_table.py --target trt --precision fp16
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import check_kept_convs, command_line, forms_summary
from benchmarks.paper_table_report import (
    RESULTS,
    CheckpointResult,
    PaperTable,
    Row,
    confirmations_for,
    write_results,
)
from benchmarks.paper_table_speed import speed_only_table
from benchmarks.paper_table_variants import (
    BASELINES,
    ORIGINAL,
    SENSITIVITIES,
    Variant,
    build_variants,
    compute_sensitivities,
    export_default_choices,
    spectrum_energy,
)
from gdws_export.attacks import AttackConfig
from gdws_export.errors import GDWSExportError
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.selection import count_macs
from gdws_export.harness.accuracy import evaluate_accuracy
from gdws_export.harness.attack_copy import attack_copy
from gdws_export.harness.data import load_dataset, load_train_and_test
from gdws_export.harness.machine import machine_info
from gdws_export.harness.shipping import export_and_build, put_back_originals
from gdws_export.harness.speed import benchmark
from gdws_export.harness.sweep_report import pareto_front
from gdws_export.lowering import measure_layer_costs
from gdws_export.lowering.auto import DEFAULT_CANDIDATES
from gdws_export.lowering.forms import FORMS, is_form
from gdws_export.models import load_model
from gdws_export.runtimes.build import TARGETS, BuildResult
from gdws_export.runtimes.tensorrt import import_tensorrt

CHECKPOINTS = (
    "fmnist_vgg16_bn_w16",
    "fmnist_preact_resnet18_w16",
    "fmnist_vgg16_bn_w32",
    "fmnist_preact_resnet18_w24",
    "fmnist_wrn28_4_w16",
)
# Measured at one ratio, the export default's measures and fewer images, to fit the time
# budget (NAME@R: at ratio R, else --light-ratios): the wider nets at the ratio where they
# pass 2x on ONNX Runtime CPU.
LIGHT = ("fmnist_vgg16_bn_w32", "fmnist_preact_resnet18_w24@0.2", "fmnist_wrn28_4_w16")
# Convs kept exact (`approximate(exclude=...)`), NAME:LAYER[,LAYER]. The MAC budget prices a
# kernel of the width-32 VGG-16's features.3 (32 channels at 28x28) 30 times one of its last
# convs, so at 0.25 it kept 16 kernels for 32 channels; keeping it exact kept 0.8 points of
# PGD-20 accuracy on 3000 test images (results/keep-exact-2026-12-06-intel-vgg32*.md). Not a
# default for every net: on the width-16 VGG-16 it cost 1.0 point (benchmarks/README.md).
KEEP_EXACT = ("fmnist_vgg16_bn_w32:features.3",)
BATCHES = (1, 32)
SAME_GRAPH = "original (A/A)"
RUNTIME_NAMES = {"ort": "ONNX Runtime CPU", "trt": "TensorRT", "torch": "PyTorch"}


def load_data(spec: str):
    """(x_train, y_train, x_test, y_test): a named dataset's two splits, or one .npz file split
    in halves, the first calibrating and the second evaluating (for quick runs)."""
    if spec.endswith(".npz"):
        x, y = load_dataset(spec)
        half = len(x) // 2
        return x[:half], y[:half], x[half:], y[half:]
    return load_train_and_test(spec)


def run_checkpoint(path: Path, data, args, workdir: Path) -> CheckpointResult:
    """Every row of one checkpoint (module docstring, steps 1 to 5)."""
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = data
    model = load_model(path).eval()
    shape = tuple(model.input_shape)
    name = path.stem
    plan = checkpoint_plan(name, args)
    print(f"{name}: sensitivities {plan.measures}", flush=True)
    sensitivities = compute_sensitivities(model, (x_train, y_train), plan.measures, eps=args.eps,
                                          samples=args.calib_samples)  # fmt: skip
    ratios = plan.ratios
    costs, costs_s = None, 0.0
    if args.time_ratios:
        clock = time.perf_counter()
        costs = measure_layer_costs(model, shape, batch=args.auto_batch, threads=args.threads)
        costs_s = time.perf_counter() - clock
    calibration = (x_train[: args.calib_samples], y_train[: args.calib_samples])
    variants = build_variants(model, ratios, sensitivities, baselines=tuple(args.baselines),
                              comparison_ratios=plan.comparison_ratios,
                              time_ratios=tuple(args.time_ratios), layer_costs=costs,
                              refit=tuple(args.refit), refit_data=calibration,
                              eps=args.eps, exclude=plan.exclude)  # fmt: skip
    for variant in variants:
        if variant.budget == "time":  # the timing is part of making it
            variant.seconds += costs_s
    held_out = slice(args.calib_samples, args.calib_samples + args.held_out_samples)
    defaults = export_default_choices(variants, ratios, (x_train[held_out], y_train[held_out]),
                                      args.eps)  # fmt: skip
    notes = [
        "comparison rows (GDWS without the refit, baselines) at MAC ratio "
        + ", ".join(f"{r:g}" for r in plan.comparison_ratios)
    ]
    if plan.exclude:
        notes.insert(0, f"kept exact in every GDWS and dws row: {', '.join(plan.exclude)} "
                        "(--keep-exact; the pruning baselines prune them)")  # fmt: skip
    if plan.light:
        notes.insert(0, f"light checkpoint: ratios {list(ratios)}, measures {list(plan.measures)}")
    builds, exports = {}, {}
    for variant in variants:
        clock = time.perf_counter()
        builds[variant.name] = export_variant(
            variant, model, workdir / f"{name}-{_stem(variant.name)}", x_test[:16], args
        )
        exports[variant.name] = time.perf_counter() - clock
        print(f"  {variant.name}: approximate {variant.seconds:.1f} s, export+build "
              f"{exports[variant.name]:.1f} s, {lowering_summary(variant)}", flush=True)  # fmt: skip
    runners = {v.name: builds[v.name].runner() for v in variants}
    # The original graph again, in its own session: how far identical graphs differ here.
    runners[SAME_GRAPH] = builds[ORIGINAL].runner()
    speed = benchmark(
        runners,
        batch_sizes=BATCHES, duration_s=args.duration, warmup_s=args.warmup, reference=ORIGINAL,
        input_shape=shape,
    )  # fmt: skip
    print(f"  timed {len(variants)} graphs", flush=True)
    same = {v.name for v in variants if v.name != ORIGINAL and _is_original(v)}
    attacked = [v for v in variants if v.name not in same]
    attack = AttackConfig("pgd", eps=args.eps, step_size=args.step_size, steps=args.steps)
    samples = plan.samples
    torch.manual_seed(0)
    accuracy = evaluate_accuracy(
        {v.name: attack_copy(v.model) for v in attacked},
        x_test[:samples], y_test[:samples], attacks=[attack],
        engines={v.name: builds[v.name].runner() for v in attacked},
        batch_size=args.eval_batch, data=f"{args.data} test[:{samples}]",
    )  # fmt: skip
    print(f"  attacked {len(attacked)} models on {samples} images", flush=True)
    rows = [_row(v, model, shape, speed, accuracy, exports[v.name], v.name in same)
            for v in variants]  # fmt: skip
    for row, flag in zip(rows, pareto_front([(r.fps_b32, r.robust) for r in rows]), strict=True):
        row.pareto = flag
    floor = {f"b{b}": round(speed.speedup(SAME_GRAPH, b), 3) for b in BATCHES}
    notes.append(
        f"noise floor: the original graph in a second session ran at {floor['b1']:.2f}x (batch "
        f"1) and {floor['b32']:.2f}x (batch 32) of the first"
    )
    return CheckpointResult(
        name=name, arch=model.arch_name, path=str(path), input_shape=list(shape),
        attack=attack.describe(),
        sensitivity_seconds={k: round(v.seconds, 2) for k, v in sensitivities.items()},
        spectra=spectrum_energy(model), rows=rows, speed=speed.to_dict(),
        accuracy=accuracy.to_dict(), notes=notes, noise_floor=floor,
        seconds=time.perf_counter() - start, export_defaults=defaults,
        kept_exact=list(plan.exclude),
    )  # fmt: skip


@dataclass(frozen=True)
class CheckpointPlan:
    """What one checkpoint is measured with."""

    light: bool
    ratios: tuple[float, ...]
    measures: tuple[str, ...]
    comparison_ratios: tuple[float, ...]
    samples: int
    exclude: tuple[str, ...] = ()  # convs kept exact (--keep-exact)


def checkpoint_plan(name: str, args: argparse.Namespace) -> CheckpointPlan:
    """Full checkpoints: --ratios, --sensitivities, --samples; --light ones: their own ratios
    (`NAME@R,R`) or --light-ratios, --light-sensitivities, --samples-light. The comparison rows
    (GDWS without the refit, baselines: `build_variants`) run at the smallest ratio only (the
    fastest, where the 2x target lies), unless --all-comparison-ratios."""
    light = name in args.light
    if light:
        ratios = tuple(args.light[name] or args.light_ratios)
        measures, samples = tuple(args.light_sensitivities), args.samples_light
    else:
        ratios, measures, samples = tuple(args.ratios), tuple(args.sensitivities), args.samples
    comparison_ratios = ratios if args.all_comparison_ratios else (min(ratios),)
    exclude = args.keep_exact.get(name, ())
    return CheckpointPlan(light, ratios, measures, comparison_ratios, samples, exclude)


def keep_exact_entry(text: str) -> tuple[str, tuple[str, ...]]:
    """`NAME:LAYER[,LAYER]`: the convs checkpoint NAME keeps exact (`NAME:` none)."""
    name, colon, layers = text.partition(":")
    if not name or not colon:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:LAYER[,LAYER] (NAME: for none)")
    return name, tuple(layer for layer in layers.split(",") if layer)


def _light_entry(text: str) -> tuple[str, tuple[float, ...]]:
    """`NAME` or `NAME@R,R` (the ratios this light checkpoint is measured at)."""
    name, _, ratios = text.partition("@")
    try:
        values = tuple(float(r) for r in ratios.split(",")) if ratios else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME or NAME@RATIO[,RATIO]") from None
    if not name or any(not 0 < r <= 1 for r in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME or NAME@RATIO[,RATIO] (0 < RATIO <= 1)"
        )
    return name, values


def export_variant(variant: Variant, original, stem: Path, parity_inputs, args) -> BuildResult:
    """Export one model for `args.target` and build it (`harness.shipping.export_and_build`).

    With the auto lowering (`--target ort`), layers where the original conv ran faster ship
    it, and go back into `variant.model` too: attack what ships. `--target trt` uses the
    reference lowering ("gather"): auto times on ONNX Runtime CPU, which says nothing about
    TensorRT."""
    lowering = args.lowering or ("auto" if args.target == "ort" else "gather")
    # The TensorRT profile covers the timed batches and the accuracy replay's batch.
    shipped = export_and_build(
        variant.model, stem, input_shape=tuple(original.input_shape), target=args.target,
        precision=args.precision, lowering=lowering, parity_inputs=parity_inputs,
        original=original if lowering == "auto" and variant.method in ("gdws", "dws") else None,
        threads=args.threads, auto_batch=args.auto_batch, candidates=tuple(args.candidates),
        repeats=args.auto_repeats, trt_batch=(1, max(BATCHES), max(*BATCHES, args.eval_batch)),
    )  # fmt: skip
    if args.target == "torch":
        variant.details["lowering"] = f"torch.export ({len(_gdws_layers(variant.model))} GDWS)"
    else:
        variant.details["forms"] = shipped.forms
    put_back_originals(variant.model, original, shipped.original_layers)
    return shipped.build


def runtime_problem(target: str, precision: str) -> str | None:
    """Why this machine cannot run `target` at `precision`, checked before any work; None if
    it can."""
    if target == "trt":
        try:
            import_tensorrt()
        except GDWSExportError as exc:
            return f"--target trt: {exc}"
    if target == "torch" and precision == "fp16" and not torch.cuda.is_available():
        return "--target torch --precision fp16 needs a CUDA GPU (none is visible)"
    return None


def runtime_label(target: str, precision: str) -> str:
    """The runtime part of the results' file name: ort-cpu, trt-fp16, torch-cuda-fp32, ..."""
    if target == "ort":
        return "ort-cpu" if precision == "fp32" else f"ort-cpu-{precision}"
    if target == "torch":
        return f"torch-{'cuda' if torch.cuda.is_available() else 'cpu'}-{precision}"
    return f"trt-{precision}"


def _stem(name: str) -> str:
    return name.replace("@", "_r")


def _gdws_layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, GDWSConv2d)]


def _is_original(variant: Variant) -> bool:
    """A GDWS or DWS model all of whose layers went back to the original convs."""
    return variant.method in ("gdws", "dws") and not _gdws_layers(variant.model)


def lowering_summary(variant: Variant) -> str:
    if variant.method == ORIGINAL:
        return "original"
    if "lowering" in variant.details:
        return variant.details["lowering"]
    return forms_summary(variant.details.get("forms", {}))


def _row(variant, original, shape, speed, accuracy, export_s, same) -> Row:
    source = accuracy.model(ORIGINAL if same else variant.name)
    attack = source.attacks[0]
    b1, b32 = speed.result(variant.name, 1), speed.result(variant.name, 32)
    macs = count_macs(variant.model, shape)
    return Row(
        variant=variant.name, method=variant.method, sensitivity=variant.sensitivity,
        target_ratio=variant.target_ratio, budget=variant.budget,
        conv_mac_ratio=variant.conv_mac_ratio, macs=macs,
        macs_ratio=macs / count_macs(original, shape),
        params=sum(p.numel() for p in variant.model.parameters()),
        lowering=lowering_summary(variant),
        fps_b1=1e3 / b1.latency.median_ms, fps_b32=32e3 / b32.latency.median_ms,
        speedup_b1=speed.speedup(variant.name, 1), speedup_b32=speed.speedup(variant.name, 32),
        p90_ms_b1=b1.latency.p90_ms, p90_ms_b32=b32.latency.p90_ms,
        clean=source.clean_accuracy, robust=attack.robust_accuracy,
        engine_clean=source.engine_clean_accuracy, engine_robust=attack.engine_accuracy,
        samples=source.samples, same_as_original=same, approximate_s=variant.seconds,
        export_s=export_s,
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--models-dir", type=Path, default=Path(__file__).parent.parent / "models",
        help="folder of the <checkpoint>.pt files")  # fmt: skip
    add("--checkpoints", nargs="+", default=list(CHECKPOINTS))
    add("--data", default="fashion-mnist",
        help="named dataset with train/test splits, or an .npz file (see load_data)")  # fmt: skip
    add("--ratios", nargs="+", type=float, default=[0.25, 0.2],
        help="MAC ratios of the GDWS and baseline rows: 0.25 and 0.2, where the 2x target "
             "lies on the bundled checkpoints (0.5 too, as in results/ort-cpu-2026-12-05-intel, "
             "takes the run past 30 minutes on a 2-core Intel machine)")  # fmt: skip
    add("--time-ratios", nargs="*", type=float, default=[],
        help="time budgets of gdws-time rows (primary measure, layer costs measured on ONNX "
             "Runtime CPU at --auto-batch), e.g. 0.5; none by default: they led no comparison "
             "in the 2026-12-03 tables and cost about 2 minutes")  # fmt: skip
    add("--sensitivities", nargs="+", choices=SENSITIVITIES,
        default=["none", "paper", "calibrated"],
        help="measures of the gdws-<measure> rows (relative and activation also exist; left "
             "out by default to keep the run within 30 minutes: they led no comparison)")  # fmt: skip
    add("--refit", nargs="*", choices=SENSITIVITIES, default=["none", "calibrated"],
        help="measures whose GDWS rows also appear with their 1x1 convs refit on the "
             "calibration images (gdws-<measure>+refit rows; none given: no such rows); "
             "default: none (the export's default with the refit, best on VGG-16) and "
             "calibrated (best on PreActResNet-18)")  # fmt: skip
    add("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES))
    add("--all-comparison-ratios", action="store_true",
        help="the comparison rows (GDWS without the refit, baselines) at every ratio of a "
             "checkpoint, not only at its smallest (the refit rows run at every ratio)")  # fmt: skip
    add("--light", nargs="*", type=_light_entry, default=None,
        help="checkpoints measured with --light-sensitivities / --samples-light at their own "
             "ratios (NAME@R,R) or --light-ratios, to fit the time budget (the width-32 "
             f"VGG-16 costs 4x the MACs of the width-16 one per attacked image); default "
             f"{' '.join(LIGHT)}")  # fmt: skip
    add("--keep-exact", nargs="*", type=keep_exact_entry, default=None,
        help="NAME:LAYER[,LAYER]: convs of checkpoint NAME that every GDWS and dws row keeps "
             f"exact (NAME: for none); default {' '.join(KEEP_EXACT)} (see KEEP_EXACT)")  # fmt: skip
    add("--light-ratios", nargs="+", type=float, default=[0.25],
        help="ratios of the --light checkpoints named without their own")  # fmt: skip
    add("--light-sensitivities", nargs="+", choices=SENSITIVITIES, default=["none", "calibrated"],
        help="measures of the --light checkpoints: by default the candidates of the export's "
             "--sensitivity auto, so the table names what the export ships there too")  # fmt: skip
    add("--samples", type=int, default=200, help="test images attacked per model")
    add("--samples-light", type=int, default=100)
    add("--calib-samples", type=int, default=256,
        help="training images for the sensitivities and the refit")  # fmt: skip
    add("--held-out-samples", type=int, default=256,
        help="the training images after those that judge the export's default choice of "
             "measure (--sensitivity auto) among the refit rows")  # fmt: skip
    add("--eps", type=float, default=0.1)
    add("--step-size", type=float, default=0.01)
    add("--steps", type=int, default=100)
    add("--eval-batch", type=int, default=100)
    add("--target", choices=TARGETS, default="ort",
        help="runtime timed and replayed on: ort (ONNX Runtime CPU), trt (TensorRT, needs a "
             "GPU), torch (PyTorch, CUDA when visible)")  # fmt: skip
    add("--precision", choices=("fp32", "fp16"), default="fp32")
    add("--lowering", default=None,
        help="GDWS lowering; default auto for --target ort, gather for trt")  # fmt: skip
    add("--threads", type=int, default=1,
        help="ONNX Runtime intra-op threads of every session: timing, auto lowering, layer "
             "costs, replay (default 1, one session per core: at 2 threads the same graphs' "
             "speed-up moved 0.8x-1.8x between fresh sessions, see session-noise-2026-12-03)")  # fmt: skip
    add("--torch-threads", type=int, default=os.cpu_count() or 1,
        help="PyTorch threads: sensitivities, approximation, refit, attacks (default: all "
             "cores)")  # fmt: skip
    add("--duration", type=float, default=1.0, help="timed seconds per graph and batch")
    add("--warmup", type=float, default=0.2)
    add("--auto-batch", type=int, default=32, help="batch auto lowering times at")
    add("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES),
        help="forms the auto lowering times; default: the export's own (gdws-export ships "
             "what they choose), %(default)s")  # fmt: skip
    add("--auto-repeats", type=int, default=3)
    add("--speed-only", nargs="*", default=["vgg16_bn", "preact_resnet18", "resnet18", "wrn28_4"],
        help="full-size CIFAR architectures of the speed-only table (none: skip it)")  # fmt: skip
    add("--speed-ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    add("--speed-iterations", type=int, default=3)
    add("--speed-auto-repeats", type=int, default=1,
        help="the auto lowering's timing rounds in the speed-only table (its exports took 7 "
             "of the 31 minutes of results/ort-cpu-2026-12-06-intel-vgg32-default at 3)")  # fmt: skip
    add("--out", type=Path, default=None,
        help="output stem; default results/<runtime>-<date> (see runtime_label)")  # fmt: skip
    add("--quick", action="store_true", help="CI-sized run (see the module docstring)")
    args = parser.parse_args(argv)
    missing = [n for n in args.checkpoints if not (args.models_dir / f"{n}.pt").is_file()]
    if missing:
        parser.error(f"no checkpoint {missing[0]}.pt in {args.models_dir}")
    for option, given, default, entry in (("light", args.light, LIGHT, _light_entry),
                                          ("keep_exact", args.keep_exact, KEEP_EXACT,
                                           keep_exact_entry)):  # fmt: skip
        # the defaults name checkpoints a run may leave out; a name given here must be in it
        unknown = [n for n, _ in given or () if n not in args.checkpoints]
        if unknown:
            parser.error(f"--{option.replace('_', '-')} {unknown[0]}: not one of --checkpoints")
        setattr(args, option, dict(given if given is not None else map(entry, default)))
    for name, layers in args.keep_exact.items():
        if name in args.checkpoints and layers:
            check_kept_convs(parser, "--keep-exact", args.models_dir / f"{name}.pt", layers)
    if args.lowering is not None and args.lowering != "auto" and not is_form(args.lowering):
        parser.error(f"--lowering {args.lowering!r} is not auto or a lowering form {FORMS}")
    if args.threads < 1 or args.torch_threads < 1:
        parser.error("--threads and --torch-threads must be at least 1")
    if args.auto_repeats < 1 or args.speed_auto_repeats < 1:
        parser.error("--auto-repeats and --speed-auto-repeats must be at least 1")
    if args.calib_samples < 1 or args.held_out_samples < 1:
        parser.error("--calib-samples and --held-out-samples must be at least 1")
    if args.quick:
        args.checkpoints = args.checkpoints[:1]
        args.ratios = [0.75, 0.5]
        args.sensitivities = ["none", "relative", "activation", "calibrated"]
        args.refit = ["none", "calibrated"]  # the export default's candidates
        args.time_ratios = [1.0]
        args.baselines, args.light, args.keep_exact = ["l1-prune", "in-prune"], {}, {}
        args.samples, args.calib_samples, args.held_out_samples, args.steps = 8, 16, 32, 2
        args.duration, args.warmup, args.auto_repeats = 0.05, 0.0, 1
        args.candidates, args.speed_only = ["dense", "gather"], []
    return args


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    problem = runtime_problem(args.target, args.precision)
    if problem is not None:
        raise SystemExit(f"paper_table.py: {problem}")
    torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    date = datetime.date.today().isoformat()
    label = runtime_label(args.target, args.precision)
    out = args.out if args.out is not None else RESULTS / f"{label}-{date}"
    data = load_data(args.data)
    checkpoints = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.checkpoints:
            checkpoints.append(
                run_checkpoint(args.models_dir / f"{name}.pt", data, args, Path(tmp))
            )
        speed_rows, speed_settings = [], {}
        if args.speed_only:
            speed_rows, speed_settings = speed_only_table(
                args.speed_only, args.speed_ratios, threads=args.threads,
                iterations=args.speed_iterations, candidates=tuple(args.candidates),
                repeats=args.speed_auto_repeats, auto_batch=args.auto_batch, workdir=Path(tmp),
            )  # fmt: skip
    machine = machine_info(gpu=False)
    attack = checkpoints[0].attack if checkpoints else ""
    confirmations = confirmations_for(args.target, attack)  # settle provisional verdicts
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["attack"] = attack
    settings["runtime"] = RUNTIME_NAMES[args.target] + (
        f" {args.precision.upper()}" if args.precision != "fp32" else ""
    )
    table = PaperTable(
        command=command_line("paper_table.py", argv),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine={"summary": machine.summary(), **machine.to_dict()}, load_before=load_before,
        load_after=[round(x, 2) for x in os.getloadavg()], settings=settings,
        checkpoints=checkpoints, speed_only=speed_rows, speed_only_settings=speed_settings,
        seconds=time.perf_counter() - start, confirmations=confirmations,
    )  # fmt: skip
    paths = write_results(table, out)
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {table.seconds / 60:.1f} min")
    return paths


if __name__ == "__main__":
    main()
