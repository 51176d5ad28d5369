"""`export_onnx`: lower, export, simplify, check parity, store metadata, write atomically."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gdws_export._files import atomic_output
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d, conv_macs_per_pixel
from gdws_export.lowering.auto import SPEED_MARGIN, beats_original, choose_forms, fastest_form
from gdws_export.lowering.export import default_opset, export_model
from gdws_export.lowering.export_result import ExportResult, LayerLowering
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.forms import fold_slots
from gdws_export.lowering.lower import gdws_layers, lower_model, put_back_originals
from gdws_export.lowering.metadata import write_metadata
from gdws_export.lowering.options import ExportOptions
from gdws_export.lowering.parity import ParityReport, check_parity
from gdws_export.lowering.simplify import simplify_model
from gdws_export.lowering.timing import record_shapes, time_networks

DEFAULT_PARITY_INPUTS = 16


def export_onnx(
    model: nn.Module,
    options: ExportOptions | None = None,
    *,
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    parity_inputs: torch.Tensor | np.ndarray | None = None,
    original: nn.Module | None = None,
    metadata: dict | None = None,
    **settings: Any,
) -> ExportResult:
    """Export a GDWS model (or any CNN) to a plain ONNX graph, checked against PyTorch.

    Args:
        model: the PyTorch model, GDWS convs included; it is not modified.
        options: lowering, exporter, opset, batch, timing and parity settings
            (`ExportOptions`); None: the defaults ("auto" lowering, dynamo, opset 18).
        input_shape: (C, H, W) of one input image ((N, C, H, W) is accepted, N ignored).
        path: the .onnx file to write; the report goes next to it as `<stem>.report.json`.
        parity_inputs: (N, C, H, W) images in [0, 1] to check parity on; None uses 16 random
            images (prefer real ones).
        original: the model before GDWS; layers where "dense" wins ship its conv. Without it
            they ship the GDWS weights as one dense conv (same speed, GDWS accuracy).
        metadata: GDWS settings to store (beta or mac_ratio, alphas source...), JSON-able.
        **settings: any `ExportOptions` field (lowering, exporter, opset, dynamic_batch,
            simplify, parity_tolerance, threads, batch, align, candidates, repeats),
            overriding `options`'.

    Returns:
        ExportResult with the paths, the per-layer forms and timings, and the parity figures.

    Raises:
        ParityError: the final graph misses the tolerance (nothing is written).
        UnsupportedModelError: the model cannot be exported.
        InvalidInputError: bad arguments.

    Example:
        >>> result = export_onnx(gdws_model, input_shape=(3, 32, 32), path="vgg.onnx",
        ...                      threads=2, batch=32)            # doctest: +SKIP
        >>> result.parity.relative_diff < 1e-4                   # doctest: +SKIP
        True
    """
    opts = ExportOptions.resolve(options, **settings)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    path, inputs = Path(path), _parity_inputs(parity_inputs, _check_input_shape(input_shape))
    align = _default_align() if opts.align is None else int(opts.align)
    was_training = model.training
    model.eval()
    try:
        layers = gdws_layers(model)
        originals = _originals(original, layers)
        example = _example(inputs, opts)
        plan = _plan_forms(model, opts, layers, originals, example, align)
        seconds["choose"] = time.perf_counter() - clock
        lowered = lower_model(model, plan.forms, sites=plan.sites, originals=originals, align=align)
        proto, tool, simplify_notes = _export_graph(lowered, example, opts, seconds, clock)
        reference = _reference(model, original, originals, plan.forms)
        parity = _check_final(reference, proto, inputs, opts)
        seconds["parity"] = time.perf_counter() - clock - sum(seconds.values())
        layer_reports = _layer_reports(model, layers, plan, example)
    finally:
        model.train(was_training)
    from gdws_export import __version__

    network = plan.network
    result = ExportResult(
        onnx_path=str(path), report_path=str(_report_path(path)), lowering=opts.lowering,
        exporter=opts.exporter, opset=default_opset(proto), dynamic_batch=opts.dynamic_batch,
        batch=opts.batch, threads=opts.threads, align=align, simplifier=tool,
        simplify_notes=simplify_notes, parity=parity, layers=layer_reports,
        settings=dict(metadata or {}), tool_version=__version__, seconds=seconds,
        network_plan=network.plan, network_ms=network.ms,
        confirmation_ms=network.confirmation_ms, speed_check=network.speed_check,
        speed_margin=SPEED_MARGIN if network.plan else None,
    )  # fmt: skip
    write_metadata(proto, _metadata(result))
    _write_atomically(path, proto.SerializeToString(), result.to_json().encode())
    return result


def _export_graph(lowered, example, opts: ExportOptions, seconds: dict[str, float], clock: float):
    """Export the lowered model and simplify it; records both stages in `seconds` (measured
    from `clock`, less the stages before). Returns (graph, simplifier, its notes)."""
    proto = export_model(
        lowered, example, exporter=opts.exporter, opset=opts.opset,
        dynamic_batch=opts.dynamic_batch,
    )  # fmt: skip
    seconds["export"] = time.perf_counter() - clock - sum(seconds.values())
    tool, notes = "none", []
    if opts.simplify:
        simplified = simplify_model(proto, example.numpy(), dynamic_batch=opts.dynamic_batch)
        proto, tool, notes = simplified.model, simplified.tool, simplified.notes
    seconds["simplify"] = time.perf_counter() - clock - sum(seconds.values())
    return proto, tool, notes


def _reference(model, original, originals, forms: dict[str, str]) -> nn.Module:
    """What the graph must compute: `model`, with the original conv put back in every layer
    shipped as the original ("dense" with an original given)."""
    restored = [n for n, f in forms.items() if f == "dense" and n in originals]
    if not restored:
        return model
    reference = copy.deepcopy(model)
    put_back_originals(reference, original, restored)
    return reference


@dataclass
class _FormPlan:
    """The form of every GDWS layer, the fold sites, `auto`'s timings, notes for the report,
    and (with `auto`) the whole-network check."""

    forms: dict[str, str]
    sites: dict
    timings: dict = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    network: _NetworkCheck = field(default_factory=lambda: _NetworkCheck())


def _plan_forms(model, opts: ExportOptions, layers, originals, example, align) -> _FormPlan:
    """Each layer's form: `auto`'s timed choice (checked on the whole network), or the one
    form asked for, "gather" where a fold cannot reach."""
    lowering = opts.lowering
    needs_fold = lowering == "auto" or fold_slots(lowering) is not None
    sites, fold_reasons = find_fold_sites(model) if layers and needs_fold else ({}, {})
    notes: dict[str, list[str]] = {n: [] for n in layers}
    if lowering == "auto" and layers:
        timed = dict(align=align, batch=opts.batch, threads=opts.threads, repeats=opts.repeats)
        timings = choose_forms(
            model, example, sites=sites, originals=originals, candidates=opts.candidates, **timed
        )
        for n, t in timings.items():
            notes[n] += t.notes
        network = _check_network(
            model, {n: t.form for n, t in timings.items()}, example, sites=sites,
            originals=originals, **timed,
        )  # fmt: skip
        return _FormPlan(network.forms, sites, timings, notes, network)
    forms = {}
    for n in layers:
        if fold_slots(lowering) is not None and n not in sites:
            forms[n] = "gather"
            notes[n].append(f"{lowering} impossible ({fold_reasons.get(n)}); gather")
        else:
            forms[n] = lowering
    return _FormPlan(forms, sites, notes=notes)


@dataclass
class _NetworkCheck:
    """What `_check_network` decided: the plan shipped and its forms, the timings of both
    rounds ([median, p90, fastest] ms per batch), and the decision in one line."""

    plan: str = ""
    forms: dict[str, str] = field(default_factory=dict)
    ms: dict[str, list[float]] = field(default_factory=dict)
    confirmation_ms: dict[str, list[float]] = field(default_factory=dict)
    speed_check: str = ""


def _check_network(
    model, forms, example, *, sites, originals, align, batch, threads, repeats
) -> _NetworkCheck:
    """Time the whole model with the per-layer choice, all-gather and all-dense (the original
    convs); the fastest wins, a GDWS plan only by `SPEED_MARGIN`. A winning GDWS plan is then
    timed again against all-dense alone, in fresh interleaved rounds, and ships only if it is
    still faster by the margin: the first round's winner is the best of several noisy draws,
    so its lead there is biased up."""
    plans = {"auto": forms, "gather": {n: "gather" for n in forms}}
    plans["dense"] = {n: "dense" for n in forms}
    if forms == plans["gather"]:  # one graph is timed once
        del plans["gather"]
    if forms == plans["dense"]:
        del plans["auto"]
    models = {
        key: lower_model(model, plan, sites=sites, originals=originals, align=align)
        for key, plan in plans.items()
    }
    times = time_networks(models, example, batch=batch, threads=threads, repeats=repeats)
    ms = {k: list(v) for k, v in times.items()}
    best = fastest_form({k: fastest for k, (_, _, fastest) in times.items()})
    margin = f"{SPEED_MARGIN:.0%} margin"
    if best == "dense":
        gdws = {k: v[2] for k, v in times.items() if k != "dense"}
        tried = min(gdws, key=gdws.get)
        speed_check = (
            f"no GDWS graph ran faster than the original graph by the {margin} (the fastest, "
            f"the {tried} plan, {times['dense'][2] / gdws[tried]:.2f}x), so the original ships"
        )
        return _NetworkCheck("dense", plans["dense"], ms, {}, speed_check)
    pair = {best: models[best], "dense": models["dense"]}
    confirmation = time_networks(pair, example, batch=batch, threads=threads, repeats=repeats)
    speed = confirmation["dense"][2] / confirmation[best][2]
    if beats_original(confirmation[best][2], confirmation["dense"][2]):
        speed_check = (
            f"the assembled GDWS graph ({best} plan) ran {speed:.2f}x the original graph's "
            f"speed in a confirmation round ({margin}): GDWS ships"
        )
        plan = best
    else:
        speed_check = (
            f"the assembled GDWS graph ({best} plan) ran {speed:.2f}x the original graph's "
            f"speed in a confirmation round, not faster by the {margin}, so the original ships"
        )
        plan = "dense"
    confirmation_ms = {k: list(v) for k, v in confirmation.items()}
    return _NetworkCheck(plan, plans[plan], ms, confirmation_ms, speed_check)


def _check_input_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    return shape


def _parity_inputs(inputs, shape) -> np.ndarray:
    if inputs is None:
        rng = np.random.default_rng(0)
        return rng.random((DEFAULT_PARITY_INPUTS, *shape), dtype=np.float32)
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or inputs.shape[1:] != shape or len(inputs) < 1:
        raise InvalidInputError(
            f"parity_inputs must have shape (N, {', '.join(map(str, shape))}), got {inputs.shape}"
        )
    return inputs


def _example(inputs: np.ndarray, opts: ExportOptions) -> torch.Tensor:
    """The batch the model is exported and `auto` timed with: two images with a dynamic batch
    axis, else the fixed batch."""
    return torch.from_numpy(inputs[:2] if opts.dynamic_batch else _fixed_batch(inputs, opts.batch))


def _fixed_batch(inputs: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:batch])


def _originals(original: nn.Module | None, layers: dict[str, GDWSConv2d]) -> dict:
    if original is None:
        return {}
    found = {}
    for name, gdws in layers.items():
        try:
            conv = original.get_submodule(name)
        except AttributeError as exc:
            raise InvalidInputError(f"original model has no layer {name!r}") from exc
        shape = (gdws.in_channels, gdws.out_channels, gdws.kernel_size, gdws.groups)
        if (
            not isinstance(conv, nn.Conv2d)
            or (conv.in_channels, conv.out_channels, conv.kernel_size, conv.groups) != shape
        ):
            raise InvalidInputError(
                f"original layer {name!r} is not the conv GDWS layer {name!r} replaced"
            )
        found[name] = conv.eval()
    return found


def _check_final(reference, proto, inputs, opts: ExportOptions) -> ParityReport:
    from gdws_export.runtimes import OrtRunner

    tolerance = opts.parity_tolerance
    with OrtRunner(proto.SerializeToString()) as runner:
        if opts.dynamic_batch:  # batch 1 and larger batches both, so a fixed batch shows up
            return check_parity(
                reference, runner, inputs, tolerance=tolerance, batch=max(2, min(len(inputs), 8)),
                first_alone=True,
            )  # fmt: skip
        return check_parity(reference, runner, inputs, tolerance=tolerance, batch=opts.batch)


def _layer_reports(model, layers, plan: _FormPlan, example) -> list[LayerLowering]:
    forms, timings, notes = plan.forms, plan.timings, plan.notes
    shapes = record_shapes(model, example[:1], set(layers))
    reports = []
    for name, gdws in layers.items():
        out_hw = int(np.prod(shapes[name][1][2:])) if name in shapes else 0
        original_macs = conv_macs_per_pixel(gdws.depthwise) // gdws.depthwise.out_channels
        original_macs = gdws.out_channels * (gdws.in_channels // gdws.groups) * original_macs
        timing = timings.get(name)
        reports.append(
            LayerLowering(
                name=name, form=forms[name], kernels=gdws.kernels,
                kernels_per_channel=gdws.kernels_per_channel.tolist(),
                macs_original=original_macs * out_hw, macs_gdws=gdws.macs_per_pixel * out_hw,
                median_ms=dict(timing.median_ms) if timing else {},
                p90_ms=dict(timing.p90_ms) if timing else {}, notes=notes[name],
                fastest_ms=dict(timing.fastest_ms) if timing else {},
            )
        )  # fmt: skip
    return reports


def _metadata(result: ExportResult) -> dict:
    return {
        "tool": "gdws-export",
        "version": result.tool_version,
        "settings": result.settings,
        "lowering": result.lowering,
        "exporter": result.exporter,
        "opset": result.opset,
        "simplifier": result.simplifier,
        "layers": {
            lay.name: {"form": lay.form, "kernels_per_channel": lay.kernels_per_channel}
            for lay in result.layers
        },
        "macs": result.macs,
        "parity": result.parity.to_dict(),
    }


def _report_path(path: Path) -> Path:
    return path.with_name(path.stem + ".report.json")


def _write_atomically(path: Path, onnx_bytes: bytes, report: bytes) -> None:
    """Both files under temporary names first, renamed together: a failure leaves neither."""
    with atomic_output(path) as onnx_tmp, atomic_output(_report_path(path)) as report_tmp:
        onnx_tmp.write_bytes(onnx_bytes)
        report_tmp.write_bytes(report)


def _default_align() -> int:
    """ONNX Runtime's NCHWc block: 16 channels with AVX-512, 8 with AVX2 (and elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return 16 if " avx512f" in f.read() else 8
    except OSError:
        return 8


__all__ = ["ExportOptions", "ExportResult", "LayerLowering", "export_onnx"]
