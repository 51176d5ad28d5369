"""Timing small ONNX graphs on ONNX Runtime: single layers, whole models, and layer costs.

`auto` (which form of a layer to ship) and `measure_layer_costs` (what a layer costs as a
function of its kernel count, for `approximate(time_ratio=...)`) both time graphs here. Each
graph runs on its own `OrtRunner` with the deployment's thread count and batch; graphs that
are compared are timed in interleaved rounds (each round runs every graph once, so load from
other processes hits all alike); choices go by each graph's fastest round (see
`TimedGraph.fastest_ms`), reports give medians and p90s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.approximate import LayerCost
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.selection import find_convs
from gdws_export.lowering.export import export_model
from gdws_export.lowering.forms import lower_layer


@dataclass
class TimedGraph:
    """One ONNX graph on its runner, its input, and its timing samples (seconds per run)."""

    runner: object
    feed: dict
    samples: list[float] = field(default_factory=list)
    inner: int = 1

    def percentile_ms(self, percentile: float) -> float:
        return float(np.percentile(self.samples, percentile)) * 1e3

    def fastest_ms(self) -> float:
        """The fastest round: what decisions go by, since load from other processes only
        ever adds time (a burst that hits most of one graph's few rounds moves its median,
        not its fastest round)."""
        return min(self.samples) * 1e3


def record_shapes(model: nn.Module, example: torch.Tensor, names: set[str]) -> dict:
    """Input and output shapes of the named submodules in one forward pass, in call order."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in names:

            def hook(mod, args, out, name=name):
                shapes.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _anchor(channels: int) -> nn.Conv2d:
    anchor = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
    nn.init.constant_(anchor.weight, 1.0)
    return anchor


def timing_graph(
    module: nn.Module, in_shape: tuple[int, ...], threads: int | None, anchors: bool = True
) -> TimedGraph:
    """Export `module` for inputs of `in_shape` and open it on ONNX Runtime.

    With `anchors`, the module sits between two 1x1 depthwise convs: ONNX Runtime's CPU convs
    run in a blocked channel layout (NCHWc), and a layer that leaves it (a Gather does) pays
    for converting the tensor out and back, exactly as it would between two convs of a model.
    """
    from gdws_export.runtimes import OrtRunner

    x = torch.rand(in_shape)
    graph = module.eval()
    if anchors:
        graph = nn.Sequential(_anchor(in_shape[1]), module, _anchor(module.out_channels)).eval()
    # The legacy exporter is several times faster on these small graphs, with the same ops;
    # a batch of one to trace is enough with a dynamic batch axis.
    try:
        proto = export_model(graph, x[:1], exporter="legacy", check_forward=False)
    except Exception:
        proto = export_model(graph, x[:2], exporter="dynamo", check_forward=False)
    runner = OrtRunner(proto.SerializeToString(), threads=threads)
    runner.activate()
    return TimedGraph(runner, {"input": x.numpy()})


def time_interleaved(
    graphs: dict[str, TimedGraph], repeats: int, min_sample_s: float = 1e-2
) -> None:
    """Fill each graph's `samples`: `repeats` rounds over all graphs."""
    graphs = list(graphs.values())
    for g in graphs:  # warm up, then run fast graphs several times per sample
        g.runner.infer(g.feed)
        start = time.perf_counter()
        g.runner.infer(g.feed)
        g.inner = max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-7)))
    for _ in range(repeats):
        for g in graphs:
            start = time.perf_counter()
            for _ in range(g.inner):
                g.runner.infer(g.feed)
            g.samples.append((time.perf_counter() - start) / g.inner)


def time_networks(
    models: dict[str, nn.Module],
    example: torch.Tensor,
    *,
    batch: int = 1,
    threads: int | None = None,
    repeats: int = 7,
) -> dict[str, tuple[float, float, float]]:
    """Median, p90 and fastest-round milliseconds per batch of whole models, timed in
    interleaved rounds.

    `auto` checks its per-layer choice this way against the reference lowering and the
    original model: layers interact (layouts, caches) in ways single-layer graphs miss.
    """
    shape = (batch, *example.shape[1:])
    graphs = {}
    try:
        for key, module in models.items():
            graphs[key] = timing_graph(module, shape, threads, anchors=False)
        time_interleaved(graphs, repeats, min_sample_s=5e-2)
    finally:
        for g in graphs.values():
            g.runner.deactivate()
    return {
        k: (g.percentile_ms(50), g.percentile_ms(90), g.fastest_ms()) for k, g in graphs.items()
    }


def measure_layer_costs(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch: int = 1,
    threads: int | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    kernels_per_channel: tuple[int, int] = (1, 4),
    align: int = 8,
    repeats: int = 7,
) -> dict[str, LayerCost]:
    """Milliseconds per batch of every approximable conv of `model` on ONNX Runtime, as the
    `LayerCost`s `approximate(time_ratio=...)` allocates kernels by.

    Each conv is timed as it is and as GDWS convs with 1 and with 4 kernels in every channel
    (`kernels_per_channel`, capped at the rank), in the reference lowering ("gather", any
    counts per channel) and in the "slots" lowering (no Gather; it costs as many kernels in
    every channel as the channel with the most), all in interleaved rounds at the deployment's
    batch and threads. Straight lines through the two points give the fixed cost and the cost
    per kernel (gather) or per slot (slots). `auto` may later find a faster form, so the lines
    are upper bounds for what ships. Timing noise can make the second point no slower than the
    first; the cost per unit is then floored at 1 % of the first point's time per unit, so
    that kernels are never free.

    Args:
        model: the original model (left unchanged).
        input_shape: (C, H, W) of one input.
        batch, threads: as the deployed graph will run.
        skip_first, include, exclude: which convs, as for `approximate` (use the same).
        kernels_per_channel: the two kernel counts per channel to time.
        align: channel alignment of the lowered form (see `forms.pad_kernels`).
        repeats: interleaved timing rounds per layer.
    """
    low, high = kernels_per_channel
    if not 1 <= low < high:
        raise InvalidInputError(
            f"kernels_per_channel must be two counts 1 <= a < b, got {(low, high)}"
        )
    sites = [
        s for s in find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
        if s.skip_reason is None
    ]  # fmt: skip
    if not sites:
        return {}
    param = sites[0].conv.weight
    example = torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)
    was_training = model.training
    try:
        shapes = record_shapes(model.eval(), example, {s.name for s in sites})
    finally:
        model.train(was_training)
    return {
        site.name: _layer_cost(site.name, site.conv, (batch, *shapes[site.name][0][1:]),
                               (low, high), threads=threads, align=align, repeats=repeats)
        for site in sites
        if site.name in shapes  # not called in the forward: no time
    }  # fmt: skip


def _layer_cost(
    name: str,
    conv: nn.Conv2d,
    in_shape: tuple[int, ...],
    kernels_per_channel: tuple[int, int],
    *,
    threads: int | None,
    align: int,
    repeats: int,
) -> LayerCost:
    """One conv's `LayerCost` (see `measure_layer_costs`), timed at input shape `in_shape`."""
    low, high = kernels_per_channel
    rank = min(conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels // conv.groups)
    points = sorted({min(low, rank), min(high, rank)})
    modules: dict[object, nn.Module] = {"dense": conv}
    kernels = {}
    for g in points:
        counts = torch.full((conv.in_channels,), g, dtype=torch.long)
        gdws = GDWSConv2d.from_conv(conv, kernels_per_channel=counts)
        kernels[g] = gdws.kernels
        for form in ("gather", "slots"):
            modules[form, g] = lower_layer(gdws, form, align=align)
    graphs = {}
    try:
        for key, module in modules.items():
            graphs[key] = timing_graph(module, in_shape, threads)
        time_interleaved(graphs, repeats)
    finally:
        for g in graphs.values():
            g.runner.deactivate()
    ms = {key: graph.percentile_ms(50) for key, graph in graphs.items()}
    if not all(math.isfinite(v) and v > 0 for v in ms.values()):
        raise RuntimeError(f"layer {name!r}: timing failed ({ms})")
    fixed, per_kernel = _line({kernels[g]: ms["gather", g] for g in points})
    slot_fixed, per_slot = _line({g: ms["slots", g] for g in points})
    return LayerCost(ms["dense"], fixed, per_kernel, slot_fixed, per_slot)


def _line(times: dict[int, float]) -> tuple[float, float]:
    """(fixed, per unit) of the straight line through (units, time) points, lowest and
    highest; the slope is floored at 1 % of the first point's time per unit (see
    `measure_layer_costs`), the fixed part at 0."""
    first, last = min(times), max(times)
    floor = 0.01 * times[first] / first
    if first == last:
        return 0.0, times[first] / first
    slope = max((times[last] - times[first]) / (last - first), floor)
    return max(times[first] - slope * first, 0.0), slope


__all__ = [
    "TimedGraph",
    "measure_layer_costs",
    "record_shapes",
    "time_interleaved",
    "time_networks",
    "timing_graph",
]
