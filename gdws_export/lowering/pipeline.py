"""`export_onnx`: lower, export, simplify, check parity, store metadata, write atomically."""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gdws_export._files import atomic_output
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d, conv_macs_per_pixel
from gdws_export.lowering.auto import (
    DEFAULT_CANDIDATES,
    SPEED_MARGIN,
    beats_original,
    choose_forms,
    fastest_form,
)
from gdws_export.lowering.export import EXPORTERS, default_opset, export_model
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.forms import fold_slots, is_form
from gdws_export.lowering.lower import gdws_layers, lower_model, put_back_originals
from gdws_export.lowering.metadata import write_metadata
from gdws_export.lowering.parity import DEFAULT_TOLERANCE, ParityReport, check_parity
from gdws_export.lowering.simplify import simplify_model
from gdws_export.lowering.timing import record_shapes, time_networks

DEFAULT_PARITY_INPUTS = 16


@dataclass
class LayerLowering:
    """How one GDWS conv was lowered.

    Attributes:
        name: module name.
        form: the lowering form shipped ("dense" = the original conv kept).
        kernels: G, the GDWS kernels kept; kernels_per_channel: g_c per input channel.
        macs_original / macs_gdws: multiply-accumulates per image of the original conv and of
            the GDWS conv (padding kernels of grouped convs included).
        median_ms / p90_ms / fastest_ms: `auto` timings per candidate form (empty for a fixed
            lowering); the fastest round decides.
        notes: fallbacks and candidates left out, one line each.
    """

    name: str
    form: str
    kernels: int
    kernels_per_channel: list[int]
    macs_original: int
    macs_gdws: int
    median_ms: dict[str, float] = field(default_factory=dict)
    p90_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fastest_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how: paths, per-layer lowering, parity, settings.

    With `auto`, `network_ms` holds the whole-model [median, p90, fastest round]
    milliseconds per batch of the per-layer choice ("auto"), the reference lowering ("gather")
    and the original convs ("dense"), and `network_plan` the one shipped (the fastest round
    decides; a GDWS plan must beat "dense" by `speed_margin`). A GDWS plan that wins is timed
    again against "dense" alone (`confirmation_ms`) and ships only if it is still faster by
    the margin; `speed_check` says in one line what was decided.
    """

    onnx_path: str
    report_path: str
    lowering: str
    exporter: str
    opset: int
    dynamic_batch: bool
    batch: int
    threads: int | None
    align: int
    simplifier: str
    simplify_notes: list[str]
    parity: ParityReport
    layers: list[LayerLowering]
    settings: dict
    tool_version: str
    seconds: dict[str, float]
    network_plan: str = ""
    network_ms: dict[str, list[float]] = field(default_factory=dict)
    confirmation_ms: dict[str, list[float]] = field(default_factory=dict)
    speed_margin: float | None = None
    speed_check: str = ""

    @property
    def forms(self) -> dict[str, str]:
        """Layer name -> form shipped."""
        return {layer.name: layer.form for layer in self.layers}

    @property
    def dense_layers(self) -> list[str]:
        """Layers shipped as one ordinary conv: the original conv where `export_onnx` got the
        original model (see `lower.put_back_originals`), else the GDWS weights made dense."""
        return [layer.name for layer in self.layers if layer.form == "dense"]

    @property
    def macs(self) -> dict[str, int]:
        """MACs per image summed over the GDWS layers: original, GDWS, and as shipped."""
        shipped = sum(
            lay.macs_original if lay.form == "dense" else lay.macs_gdws for lay in self.layers
        )
        return {
            "original": sum(lay.macs_original for lay in self.layers),
            "gdws": sum(lay.macs_gdws for lay in self.layers),
            "shipped": shipped,
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["parity"] = self.parity.to_dict()
        data["macs"] = self.macs
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> ExportResult:
        data = {k: v for k, v in data.items() if k != "macs"}
        data["parity"] = ParityReport.from_dict(data["parity"])
        data["layers"] = [LayerLowering(**lay) for lay in data["layers"]]
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExportResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def export_onnx(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    lowering: str = "auto",
    exporter: str = "dynamo",
    opset: int | None = None,
    dynamic_batch: bool = True,
    simplify: bool = True,
    parity_inputs: torch.Tensor | np.ndarray | None = None,
    parity_tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None,
    batch: int = 1,
    original: nn.Module | None = None,
    align: int | None = None,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    repeats: int = 7,
    metadata: dict | None = None,
) -> ExportResult:
    """Export a GDWS model (or any CNN) to a plain ONNX graph, checked against PyTorch.

    Args:
        model: the PyTorch model, GDWS convs included; it is not modified.
        input_shape: (C, H, W) of one input image ((N, C, H, W) is accepted, N ignored).
        path: the .onnx file to write; the report goes next to it as `<stem>.report.json`.
        lowering: "auto" (time the forms per layer on ONNX Runtime, keep the fastest, the
            original conv included, a GDWS form only by `SPEED_MARGIN`; then time the whole
            model so chosen against all-"gather" and the original convs, ship the fastest of
            the three, a GDWS one only if a confirmation round against the original convs
            finds it still faster by the margin), or one form for every
            layer: "gather" (reference), "uniform", "slots", "fold", "fold-<S>", "dense" (see
            `forms`). Layers a fold cannot
            reach fall back to "gather" (noted in the report).
        exporter: "dynamo" (default) or "legacy".
        opset: ONNX opset; None means 18.
        dynamic_batch: symbolic batch axis (default); False fixes it to `batch`.
        simplify: run onnxsim (onnxslim as fallback); outputs are re-checked.
        parity_inputs: (N, C, H, W) images in [0, 1] to check parity on; None uses 16 random
            images (prefer real ones).
        parity_tolerance: max |logit difference| / logit scale allowed.
        threads: ONNX Runtime intra-op threads for `auto`'s timings (None: its default).
        batch: batch size `auto` times at (and the fixed batch when not dynamic).
        original: the model before GDWS; layers where "dense" wins ship its conv. Without it
            they ship the GDWS weights as one dense conv (same speed, GDWS accuracy).
        align: channel alignment of the forms; None picks 16 on AVX-512 CPUs, else 8.
        candidates: forms `auto` times.
        repeats: `auto`'s interleaved timing rounds.
        metadata: GDWS settings to store (beta or mac_ratio, alphas source...), JSON-able.

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
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    shape = _check_args(input_shape, lowering, exporter, batch)
    path = Path(path)
    align = _default_align() if align is None else int(align)
    inputs = _parity_inputs(parity_inputs, shape)
    was_training = model.training
    model.eval()
    try:
        layers = gdws_layers(model)
        originals = _originals(original, layers)
        needs_fold = lowering == "auto" or fold_slots(lowering) is not None
        sites, fold_reasons = find_fold_sites(model) if layers and needs_fold else ({}, {})
        example = torch.from_numpy(inputs[:2] if dynamic_batch else _fixed_batch(inputs, batch))
        timings, notes, network = {}, {n: [] for n in layers}, _NetworkCheck()
        if lowering == "auto" and layers:
            timings = choose_forms(
                model, example, sites=sites, originals=originals, candidates=candidates,
                align=align, batch=batch, threads=threads, repeats=repeats,
            )  # fmt: skip
            for n, t in timings.items():
                notes[n] += t.notes
            network = _check_network(
                model, {n: t.form for n, t in timings.items()}, example, sites=sites,
                originals=originals, align=align, batch=batch, threads=threads, repeats=repeats,
            )  # fmt: skip
            forms = network.forms
        else:
            forms = {}
            for n in layers:
                if fold_slots(lowering) is not None and n not in sites:
                    forms[n] = "gather"
                    notes[n].append(f"{lowering} impossible ({fold_reasons.get(n)}); gather")
                else:
                    forms[n] = lowering
        seconds["choose"] = time.perf_counter() - clock

        lowered = lower_model(model, forms, sites=sites, originals=originals, align=align)
        restored = [n for n, f in forms.items() if f == "dense" and n in originals]
        reference = model
        if restored:  # the graph computes the original conv there: check against that
            reference = copy.deepcopy(model)
            put_back_originals(reference, original, restored)
        proto = export_model(
            lowered, example, exporter=exporter, opset=opset, dynamic_batch=dynamic_batch
        )
        seconds["export"] = time.perf_counter() - clock - sum(seconds.values())
        tool, simplify_notes = "none", []
        if simplify:
            simplified = simplify_model(proto, example.numpy(), dynamic_batch=dynamic_batch)
            proto, tool, simplify_notes = simplified.model, simplified.tool, simplified.notes
        seconds["simplify"] = time.perf_counter() - clock - sum(seconds.values())
        parity = _check_final(reference, proto, inputs, parity_tolerance, dynamic_batch, batch)
        seconds["parity"] = time.perf_counter() - clock - sum(seconds.values())

        layer_reports = _layer_reports(model, layers, forms, timings, notes, example)
    finally:
        model.train(was_training)
    from gdws_export import __version__

    result = ExportResult(
        onnx_path=str(path), report_path=str(_report_path(path)), lowering=lowering,
        exporter=exporter, opset=default_opset(proto), dynamic_batch=dynamic_batch,
        batch=batch, threads=threads, align=align, simplifier=tool,
        simplify_notes=simplify_notes, parity=parity, layers=layer_reports,
        settings=dict(metadata or {}), tool_version=__version__, seconds=seconds,
        network_plan=network.plan, network_ms=network.ms,
        confirmation_ms=network.confirmation_ms, speed_check=network.speed_check,
        speed_margin=SPEED_MARGIN if network.plan else None,
    )  # fmt: skip
    write_metadata(proto, _metadata(result))
    _write_atomically(path, proto.SerializeToString(), result.to_json().encode())
    return result


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


def _check_args(input_shape, lowering, exporter, batch) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if lowering != "auto" and not is_form(lowering):
        raise InvalidInputError(
            f"unknown lowering {lowering!r}; use 'auto', 'gather', 'uniform', 'slots', 'fold', "
            "'fold-<S>' or 'dense'"
        )
    if exporter not in EXPORTERS:
        raise InvalidInputError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInputError(f"batch must be a positive int, got {batch!r}")
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


def _check_final(reference, proto, inputs, tolerance, dynamic_batch, batch) -> ParityReport:
    from gdws_export.runtimes import OrtRunner

    with OrtRunner(proto.SerializeToString()) as runner:
        if dynamic_batch:  # batch 1 and larger batches both, so a fixed batch shows up
            return check_parity(
                reference, runner, inputs, tolerance=tolerance, batch=max(2, min(len(inputs), 8)),
                first_alone=True,
            )  # fmt: skip
        return check_parity(reference, runner, inputs, tolerance=tolerance, batch=batch)


def _layer_reports(model, layers, forms, timings, notes, example) -> list[LayerLowering]:
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


__all__ = ["ExportResult", "LayerLowering", "export_onnx"]
