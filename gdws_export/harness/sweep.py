"""Sweeps: approximate -> export -> build -> bench -> attack for each GDWS setting, one report.

`sweep` approximates the model at every setting (a beta or a MAC ratio), exports and builds each
GDWS model and the original, times them all in one interleaved benchmark (the original is the
reference), evaluates clean / robust accuracy of each on PyTorch and on its engine, and returns
a SweepReport: one table row per setting, the Pareto-optimal settings (robust accuracy against
images/s), and the speed and accuracy reports behind the table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.approximate import approximate
from gdws_export.gdws.refit import refit_pointwise
from gdws_export.gdws.selection import count_macs, count_params
from gdws_export.harness.accuracy import evaluate_accuracy
from gdws_export.harness.measure_choice import choose_measure, selection_attack
from gdws_export.harness.shipping import Shipped, export_and_build, put_back_originals
from gdws_export.harness.speed import benchmark
from gdws_export.harness.sweep_report import SweepConfig, SweepReport, SweepRow

ORIGINAL = "original"
CALIBRATION_SAMPLES = 256  # images of the evaluation data that calibrate INT8 builds


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (speed, accuracy) points no other point dominates (>= in both, > in one)."""
    flags = []
    for i, (speed, acc) in enumerate(points):
        dominated = any(
            s >= speed and a >= acc and (s > speed or a > acc)
            for j, (s, a) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def sweep(
    model: nn.Module,
    config: SweepConfig,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    work_dir: str | os.PathLike,
    alphas: dict[str, torch.Tensor] | None = None,
    input_moments: dict[str, torch.Tensor] | None = None,
    refit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    measures: Mapping[str, Mapping[str, torch.Tensor] | None] | None = None,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    data_name: str = "",
) -> SweepReport:
    """Approximate, export, build, benchmark and attack the model at every setting.

    Args:
        model: the original PyTorch model (taking [0, 1] images); it is not modified.
        config: the settings and how to measure them.
        data: (x, y) evaluation images and labels (from `load_dataset`).
        work_dir: where the ONNX files and engines go (`original.onnx`, `beta_0.01.onnx`...).
        alphas: per-layer sensitivities for `approximate` (None: unweighted).
        input_moments: activation-aware input moments for `approximate` (None: the paper's SVD).
        refit_data: (x, y) calibration images, not the evaluation data: every GDWS model's 1x1
            convs are refit on them (`refit_pointwise`, clean and PGD images at the first
            attack's radius and norm). None: no refit.
        measures: instead of `alphas`, candidate alphas by measure name (None: unweighted),
            for `gdws-export`'s `--sensitivity auto`: at every MAC or time budget each
            candidate's model is built (refit included) and the most robust on `held_out`
            ships (`choose_measure`, PGD-10 at the first attack's eps). Beta settings take the
            first candidate (the measures would buy different MACs there).
        held_out: (x, y) images judging `measures`, used for nothing else.
        data_name: description of the data for the report.

    Returns:
        A SweepReport; write it with `gdws_export.harness.report.write_sweep`.

    Example:
        >>> config = SweepConfig(parse_settings(betas=[0.001, 0.01, 0.1]))
        >>> report = sweep(model, config, (x, y), work_dir="out")  # doctest: +SKIP
        >>> report.pareto_settings  # doctest: +SKIP
        ['beta=0.1', 'beta=0.01', 'original']
    """
    start = time.perf_counter()
    x, y = data
    input_shape = _input_shape(model, x)
    if measures is not None and (alphas is not None or held_out is None or not measures):
        raise InvalidInputError("sweep: give measures (at least one) with held_out, and no alphas")
    candidates = dict(measures) if measures is not None else {"": alphas}
    attack = config.attacks[0] if config.attacks else None
    eps = attack.eps if attack is not None else 8 / 255
    norm = attack.norm if attack is not None else "linf"
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, nn.Module] = {ORIGINAL: model}
    approximations: dict[str, dict] = {}
    costs = None
    if any(s.time_ratio is not None for s in config.settings):
        from gdws_export.lowering import measure_layer_costs

        # Priced at the batch the sweep ranks throughput by (its largest).
        costs = measure_layer_costs(model, input_shape, batch=max(config.batch_sizes),
                                    threads=config.threads)  # fmt: skip
    notes: list[str] = []
    if refit_data is not None:
        notes.append(f"1x1 convs refit on {len(refit_data[0])} calibration images (clean and PGD)")
    for setting in config.settings:
        built = {}
        for measure, measure_alphas in candidates.items():
            if setting.beta is not None and built:
                break  # a beta buys different MACs per measure: nothing to compare
            clock = time.perf_counter()
            gdws_model, approximation = approximate(
                model, beta=setting.beta, mac_ratio=setting.mac_ratio,
                time_ratio=setting.time_ratio, layer_costs=costs if setting.time_ratio else None,
                alphas=measure_alphas, input_moments=input_moments, input_shape=input_shape,
            )  # fmt: skip
            if refit_data is not None and approximation.replaced:
                gdws_model, _ = refit_pointwise(
                    gdws_model, model, refit_data, eps=eps, step_size=eps / 4, norm=norm,
                    samples=len(refit_data[0]),
                )  # fmt: skip
            built[measure] = (gdws_model.eval(), approximation, time.perf_counter() - clock)
        chosen, choice = next(iter(built)), None
        if len(built) > 1:
            choice = choose_measure(
                {m: b[0] for m, b in built.items()}, *held_out, selection_attack(eps, norm=norm),
                build_seconds={m: b[2] for m, b in built.items()},
            )  # fmt: skip
            chosen = choice.chosen
            held = ", ".join(f"{t.measure} {100 * t.robust:.1f} %" for t in choice.trials)
            notes.append(f"{setting.label}: shipped {chosen} alphas, the most robust on "
                         f"{choice.held_out} held-out images ({held})")  # fmt: skip
        elif measures is not None:
            notes.append(f"{setting.label}: {chosen} alphas (a beta budget; no choice)")
        models[setting.label] = built[chosen][0]
        approximations[setting.label] = json.loads(built[chosen][1].to_json())  # JSON types
        if choice is not None:
            approximations[setting.label]["sensitivity_choice"] = choice.to_dict()
    files: dict[str, Shipped] = {}
    for name, m in models.items():
        files[name] = export_and_build(
            m, work_dir / _stem(name, config), input_shape=input_shape, target=config.target,
            precision=config.precision, lowering=config.lowering,
            original=None if name == ORIGINAL else model, parity_inputs=x[:16],
            threads=config.threads, exporter=config.exporter,
            auto_batch=max(config.batch_sizes),  # forms timed where throughput is ranked
            calibration=x[:CALIBRATION_SAMPLES].numpy() if config.precision == "int8" else None,
            timing_cache=config.timing_cache,  # SweepConfig allows it with trt only
        )  # fmt: skip
        notes.extend(f"{files[name].source.name}: {w}" for w in files[name].build.warnings)
        # Layers where the original conv was faster ship it; PyTorch must attack what ships.
        put_back_originals(models[name], model, files[name].original_layers)
        notes.extend(
            f"{name}: {layer} keeps its original conv (faster on the target)"
            for layer in files[name].original_layers
        )
    speed = benchmark(
        {name: files[name].build.runner() for name in models},
        batch_sizes=config.batch_sizes,
        duration_s=config.duration_s,
        iterations=config.iterations,
        warmup_s=config.warmup_s,
        reference=ORIGINAL,
        input_shape=input_shape,
    )
    accuracy = evaluate_accuracy(
        models,
        x,
        y,
        attacks=config.attacks,
        engines={name: files[name].build.runner() for name in models},
        square=config.square,
        batch_size=config.eval_batch_size,
        data=data_name,
    )
    rows = _rows(models, config, speed, accuracy, approximations, files, input_shape)
    first = config.attacks[0].describe() if config.attacks else config.square.describe()
    return SweepReport(
        model={
            "name": getattr(model, "arch_name", type(model).__name__),
            "arch_kwargs": getattr(model, "arch_kwargs", None),
            "input_shape": list(input_shape),
        },
        data=data_name,
        config=config,
        robust_attack=first,
        rows=rows,
        speed=speed,
        accuracy=accuracy,
        approximations=approximations,
        notes=notes,
        seconds=round(time.perf_counter() - start, 3),
    )


def _rows(models, config, speed, accuracy, approximations, files, input_shape) -> list[SweepRow]:
    settings = {s.label: s for s in config.settings}
    reference_fps = speed.offline(ORIGINAL).images_per_s
    rows = []
    for name, module in models.items():
        model_accuracy = accuracy.model(name)
        first = model_accuracy.attacks[0]
        offline = speed.offline(name)
        setting = settings.get(name)
        rows.append(
            SweepRow(
                setting=name,
                beta=setting.beta if setting else None,
                mac_ratio=setting.mac_ratio if setting else None,
                time_ratio=setting.time_ratio if setting else None,
                macs=count_macs(module, input_shape),
                params=count_params(module),
                fps=offline.images_per_s,
                fps_ratio=offline.images_per_s / reference_fps,
                p90_latency_ms=speed.single_stream(name).latency.p90_ms,
                clean_accuracy=model_accuracy.clean_accuracy,
                robust_accuracy=first.robust_accuracy,
                engine_clean_accuracy=model_accuracy.engine_clean_accuracy,
                engine_robust_accuracy=(
                    first.engine_accuracy if first.target == "pytorch" else first.robust_accuracy
                ),
                conv_mac_ratio=approximations[name]["achieved_mac_ratio"] if setting else 1.0,
                onnx_path=os.fspath(files[name].source),
                engine_path=os.fspath(files[name].build.engine_path),
            )
        )
    for row, on_front in zip(
        rows, pareto_front([(r.fps, r.robust_accuracy) for r in rows]), strict=True
    ):
        row.pareto = on_front
    return rows


def _stem(name: str, config: SweepConfig) -> str:
    if name == ORIGINAL:
        return ORIGINAL
    return next(s.file_stem for s in config.settings if s.label == name)


def _input_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidInputError("sweep: the dataset is empty or not (N, C, H, W) images")
    shape = tuple(int(d) for d in x.shape[1:])
    declared = getattr(model, "input_shape", None)
    if declared is not None and tuple(declared) != shape:
        raise InvalidInputError(
            f"sweep: the data are images {shape} but the model takes {tuple(declared)} (C, H, W)"
        )
    return shape
