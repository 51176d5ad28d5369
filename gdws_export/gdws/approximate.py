"""Network-level GDWS: replace a model's KxK convs under a per-layer error bound, a MAC
budget or a time budget.

Three ways to say how much to approximate:

- `beta` (the paper's setting): every approximable conv gets LEGO with the same error bound
  beta, each with its own alphas: the fewest kernels whose weighted error is <= beta.
- `mac_ratio`: a whole-network complexity target. The convs GDWS may replace must together
  cost at most `mac_ratio` times their original MACs per image. Every kept kernel (c, i) of
  layer l costs w_l = (Kh*Kw + M/groups) * H_out * W_out MACs and removes
  alpha_c * s_{c,i}^2 of weighted error.
- `time_ratio` with `layer_costs`: the same global budget in measured time instead of MACs.
  MACs are a poor price on real runtimes: a GDWS layer is several ops where the conv was one,
  each a pass over the activations, and large memory-bound feature maps gain less from a cut
  than small ones. `LayerCost` gives each layer's time as `fixed + per_kernel * G` for G
  kernels, optionally `slot_fixed + per_slot * S` when every channel keeps the same number S
  of kernels (a form without a channel Gather, cheaper per kernel), and the original conv's
  time (`gdws_export.lowering.measure_layer_costs` measures them on the target runtime).

How the budgets are spent is in `budget`.

With `beta` or `mac_ratio`, a layer where GDWS would cost at least as many MACs as the original
conv keeps the original, and the report says so; with `time_ratio` the measured costs decide.

`max_layer_error` caps each layer's share of dropped error (its weighted error over the error
of dropping every kernel, i.e. its relative error under relative alphas). The budget's total
error is a sum over layers, which lets one layer take a large error where that buys the most;
a network does not forgive that. Time budgets need the cap most: a GDWS form has a fixed
cost (extra ops over the activations), so on the lower convex hull a layer jumps from its
original conv straight to a few kernels, and the allocation concentrates error in a few layers
(on a width-16 robust VGG-16, `time_ratio=0.45` lost 30 points of PGD-20 accuracy without a
cap and none with the default cap of 0.35). The cap is soft: it gives way only where the
budget cannot be met otherwise, and then as little as it must, so it cannot save a budget
that every layer's capped error would exceed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.approximation_report import ApproximationReport, LayerReport
from gdws_export.gdws.budget import (
    LayerCost,
    aligned_counts,
    allocate_budget,
    check_layer_costs,
    mac_cost,
)
from gdws_export.gdws.config import TIME_MAX_LAYER_ERROR, GDWSConfig
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.decomposition import (
    ChannelSVD,
    channel_svd,
    check_alpha,
    error_values,
    lego,
    weighted_error,
)
from gdws_export.gdws.selection import (
    ConvSite,
    count_params,
    find_convs,
    output_sizes,
    replace_module,
    resolve_input_shape,
)

# Skip reason of a conv the forward did not reach at the probe input.
NOT_RUN = "did not run on the probe input (a data-dependent branch or an unused layer)"


def approximate(
    model: nn.Module,
    config: GDWSConfig | None = None,
    *,
    alphas: Mapping[str, torch.Tensor] | None = None,
    input_moments: Mapping[str, torch.Tensor] | None = None,
    layer_costs: Mapping[str, LayerCost] | None = None,
    input_shape: Sequence[int] | None = None,
    **settings: Any,
) -> tuple[nn.Module, ApproximationReport]:
    """Replace the KxK convs of `model` by GDWS convs; the input model is left untouched.

    Args:
        model: any `nn.Module`.
        config: how much to approximate and which convs may be replaced (`GDWSConfig`).
        alphas: per-layer, per-input-channel sensitivities (from `noise_gains` or
            `load_alphas`), keyed by module name. None means unweighted (all ones).
        input_moments: per-layer (C, K, K) patch second moments (`input_moments`), keyed by
            module name: each layer's SVD then minimizes the expected output error instead of
            the weight error (activation-aware; pair with `activation_gains` alphas). None:
            the paper's SVD.
        layer_costs: with `time_ratio`, a `LayerCost` for every approximable conv, by name
            (`gdws_export.lowering.measure_layer_costs` measures them).
        input_shape: (C, H, W) of one input. Defaults to `model.input_shape` when the model
            has that attribute (registry models do). Needed for `mac_ratio`; otherwise it only
            turns MACs per pixel into MACs per image in the report.
        **settings: any `GDWSConfig` field (beta, mac_ratio, time_ratio, max_layer_error,
            align, skip_first, include, exclude), overriding `config`'s.

    Returns:
        (new model, report). The new model is in the same train/eval mode as the input.

    Example:
        >>> gdws_model, report = approximate(model, mac_ratio=0.5)   # doctest: +SKIP
        >>> print(report.table())                                    # doctest: +SKIP
    """
    config = GDWSConfig.resolve(config, **settings)
    if (config.time_ratio is None) != (layer_costs is None):
        raise InvalidInputError("time_ratio and layer_costs go together: give both or neither")
    needed_by = "mac_ratio" if config.mac_ratio is not None else None
    shape = resolve_input_shape(model, input_shape, needed_by=needed_by)
    sites, pixels = _priced_sites(model, config, shape)
    candidates = [s for s in sites if s.skip_reason is None]
    alpha_of = _check_alphas(alphas, sites)
    moment_of = _check_layer_map(input_moments, sites, "input_moments", "input_moments")
    svds = {s.name: channel_svd(s.conv.weight, s.conv.groups, moment_of[s.name])
            for s in candidates}  # fmt: skip
    values = {s.name: error_values(svds[s.name], alpha_of[s.name]) for s in candidates}
    plan = _plan(config, candidates, values, layer_costs, pixels)
    new_model = copy.deepcopy(model)
    layers = []
    for site in sites:
        report = LayerReport.for_conv(
            site.name, site.conv, pixels[site.name], reason=site.skip_reason or "",
            per_image=shape is not None,
        )  # fmt: skip
        if site.skip_reason is None:
            _replace(new_model, site, svds[site.name], values[site.name], plan, report)
        layers.append(report)
    return new_model, ApproximationReport(
        beta=config.beta,
        mac_ratio=config.mac_ratio,
        input_shape=shape,
        weighted=alphas is not None,
        layers=layers,
        time_ratio=config.time_ratio,
        max_layer_error=config.resolved_max_layer_error,
    )


def _priced_sites(
    model: nn.Module, config: GDWSConfig, input_shape: tuple[int, ...] | None
) -> tuple[list[ConvSite], dict[str, int]]:
    """The chosen convs (those the probe forward never reached marked `NOT_RUN`), and each
    one's output pixels per image (1 each without an input shape: costs per pixel)."""
    sites = find_convs(
        model, skip_first=config.skip_first, include=config.include, exclude=config.exclude
    )
    if input_shape is None:
        return sites, {s.name: 1 for s in sites}
    sizes = output_sizes(model, [s.name for s in sites], input_shape)
    pixels = {s.name: math.prod(sizes.get(s.name, (0, 0))) for s in sites}
    return [_mark_not_run(s, sizes) for s in sites], pixels


@dataclass
class _Plan:
    """Kernel counts per candidate layer; under a budget also the layers that keep the
    original conv, every layer's `LayerCost` and what its choice costs."""

    counts: dict[str, torch.Tensor]
    keep_original: set[str] = field(default_factory=set)
    costs: dict[str, LayerCost] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    timed: bool = False  # a time budget: measured costs, not MACs, decide GDWS vs original


def _plan(config, candidates, values, layer_costs, pixels) -> _Plan:
    if config.beta is not None:
        counts = {
            s.name: aligned_counts(s.conv, values[s.name], lego(values[s.name], config.beta),
                                   config.align)
            for s in candidates
        }  # fmt: skip
        return _Plan(counts)
    timed = config.time_ratio is not None
    if timed:
        costs = check_layer_costs(layer_costs, candidates)
    else:
        costs = {s.name: mac_cost(s.conv, pixels[s.name]) for s in candidates}
    if not candidates:
        return _Plan({}, costs=costs, timed=timed)
    counts, keep_original, spent = allocate_budget(
        candidates, values, costs, config.budget_ratio, config.resolved_max_layer_error,
        config.align,
    )  # fmt: skip
    return _Plan(counts, keep_original, costs, spent, timed)


def _replace(
    model: nn.Module,
    site: ConvSite,
    svd: ChannelSVD,
    values: torch.Tensor,
    plan: _Plan,
    report: LayerReport,
) -> None:
    """Swap one conv for its GDWS form, unless the budget keeps the original or (without a
    time budget) the GDWS form costs at least as many MACs. A time budget has already
    compared measured costs, which is what matters there."""
    counts = plan.counts[site.name]
    gdws = GDWSConv2d._build(site.conv, svd, counts, weighted_error(values, counts))
    report.kernels = gdws.kernels
    report.full_rank_kernels = int((svd.s > 0).sum())
    report.kernels_per_channel = counts.tolist()
    if plan.timed:
        report.cost_before = report.cost_after = plan.costs[site.name].original
    pixels = max(report.pixels, 1)
    if site.name in plan.keep_original:
        report.status = "original"
        report.reason = "the budget pays for the original conv"
        return
    if not plan.timed and gdws.macs_per_pixel * pixels >= report.macs_before:
        report.status = "original"
        report.reason = (
            f"GDWS would cost {gdws.macs_per_pixel * pixels:,} MACs >= {report.macs_before:,}"
        )
        return
    report.status = "gdws"
    report.macs_after = gdws.macs_per_pixel * pixels
    report.params_after = count_params(gdws)
    report.weighted_error = gdws.weighted_error
    if plan.timed:
        report.cost_after = plan.spent[site.name]
    gdws.train(site.conv.training)
    replace_module(model, site.name, gdws)


def _mark_not_run(site: ConvSite, sizes: Mapping[str, tuple[int, int]]) -> ConvSite:
    """`site`, skipped with `NOT_RUN` when the probe forward never reached it.

    Such a conv cannot be priced, and its approximation could not be checked on any input
    we have, so it stays exact (and costs nothing at this input); refusing the whole model
    would also refuse models with unused or training-only layers.
    """
    if site.name in sizes or site.skip_reason is not None:
        return site
    return replace(site, skip_reason=NOT_RUN)


def _check_alphas(alphas, sites) -> dict[str, torch.Tensor | None]:
    entries = _check_layer_map(alphas, sites, "alphas", "noise_gains")
    convs = {s.name: s.conv for s in sites}
    return {
        name: None if alpha is None else check_alpha(alpha, convs[name].in_channels, name)
        for name, alpha in entries.items()
    }


def _check_layer_map(mapping, sites, what: str, maker: str) -> dict:
    """{approximable layer: its entry of `mapping`}, all None when `mapping` is None; refuses
    names of other layers and missing entries (`what` came from another model)."""
    candidates = [s for s in sites if s.skip_reason is None]
    if mapping is None:
        return {s.name: None for s in candidates}
    unknown = sorted(set(mapping) - {s.name for s in sites})
    if unknown:
        raise InvalidInputError(
            f"{what} name layer {unknown[0]!r}, which is not a conv of this model; "
            "were they computed for another model?"
        )
    missing = sorted({s.name for s in candidates} - set(mapping))
    if missing:
        raise InvalidInputError(
            f"{what} have no entry for layer {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; compute them for the same layers ({maker}) or pass {what}=None"
        )
    return {s.name: mapping[s.name] for s in candidates}


__all__ = [
    "NOT_RUN",
    "TIME_MAX_LAYER_ERROR",
    "ApproximationReport",
    "GDWSConfig",
    "LayerCost",
    "LayerReport",
    "approximate",
]
