"""Plain depthwise-separable convs (g_c = 1 for every channel) from the same per-channel SVD.

The baseline GDWS generalizes: each input channel keeps only its best kernel (the top right
singular vector of its weight block), so a converted layer costs C * (Kh*Kw + M/groups) MACs
per output pixel whatever its spectrum. The only choice left is which layers to convert:

- `mac_ratio=None`: every approximable conv where the separable form is cheaper;
- `mac_ratio=r`: layers are converted in order of least weighted error per MAC saved
  (the same alphas as GDWS, so both methods see the same sensitivities) until the
  approximable convs cost at most r times their original MACs. When even converting every
  layer does not reach r, all are converted and the report's achieved ratio says so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from gdws_export.gdws.approximation_report import ApproximationReport, LayerReport
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.decomposition import (
    ChannelSVD,
    channel_svd,
    check_alpha,
    error_values,
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


def depthwise_separable(
    model: nn.Module,
    *,
    mac_ratio: float | None = None,
    alphas: Mapping[str, torch.Tensor] | None = None,
    input_moments: Mapping[str, torch.Tensor] | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> tuple[nn.Module, ApproximationReport]:
    """Replace KxK convs by depthwise-separable convs (one kernel per input channel).

    Args:
        model: any `nn.Module`; it is left untouched.
        mac_ratio: in (0, 1], or None to convert every layer where it saves MACs (see the
            module docstring).
        alphas: per-layer, per-channel sensitivities ranking the layers (None: unweighted).
        input_moments: per-layer input patch moments for activation-aware SVDs (as in
            `approximate`); None: the paper's SVD.
        skip_first, include, exclude: which convs may be replaced (see `find_convs`).
        input_shape: (C, H, W) of one input; defaults to `model.input_shape`.

    Returns:
        (new model, report) in the report format of `approximate`.

    Example:
        >>> dws_model, report = depthwise_separable(model, mac_ratio=0.5)   # doctest: +SKIP
    """
    if mac_ratio is not None:
        mac_ratio = check_budget_ratio(mac_ratio, "mac_ratio")
    shape = resolve_input_shape(model, input_shape, needed_by="depthwise_separable")
    sites = find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
    sizes = output_sizes(model, [s.name for s in sites], shape)
    reports, cost, error, svds = {}, {}, {}, {}
    for site in sites:
        pixels = sizes[site.name][0] * sizes[site.name][1]
        report = reports[site.name] = LayerReport.for_conv(
            site.name, site.conv, pixels, reason=site.skip_reason or ""
        )
        if site.skip_reason is not None:
            continue
        moment = None if input_moments is None else input_moments.get(site.name)
        svds[site.name] = channel_svd(site.conv.weight, site.conv.groups, moment)
        alpha = None if alphas is None else alphas.get(site.name)
        error[site.name], cost[site.name] = _separable_error_and_cost(
            site, svds[site.name], alpha, pixels
        )
        report.status, report.reason = "original", "not converted (MAC budget met without it)"
        if cost[site.name] >= report.macs_before:
            report.reason = f"separable form would cost {cost[site.name]:,} MACs"
            del cost[site.name]
    new_model = copy.deepcopy(model)
    for name in _choose_layers(reports, cost, error, mac_ratio):
        conv = model.get_submodule(name)
        _convert(new_model, conv, svds[name], reports[name], cost[name], error[name])
    return new_model, ApproximationReport(
        beta=None, mac_ratio=mac_ratio, input_shape=shape, weighted=alphas is not None,
        layers=list(reports.values()),
    )  # fmt: skip


def _separable_error_and_cost(
    site: ConvSite, svd: ChannelSVD, alpha: torch.Tensor | None, pixels: int
) -> tuple[float, int]:
    """The weighted error of one kernel per channel, and that form's MACs per image."""
    conv = site.conv
    alpha = check_alpha(alpha, conv.in_channels, site.name)
    ones = torch.ones(conv.in_channels, dtype=torch.long)
    kh, kw = conv.kernel_size
    cost = conv.in_channels * (kh * kw + conv.out_channels // conv.groups) * pixels
    return weighted_error(error_values(svd, alpha), ones), cost


def _convert(
    model: nn.Module, conv: nn.Conv2d, svd: ChannelSVD, report: LayerReport, cost: int, error: float
) -> None:
    """Swap the conv `report` names for its separable form, and say so in `report`."""
    ones = torch.ones(conv.in_channels, dtype=torch.long)
    layer = GDWSConv2d._build(conv, svd, ones, error)
    replace_module(model, report.name, layer.train(conv.training))
    report.status, report.reason = "gdws", ""
    report.kernels = layer.kernels
    report.full_rank_kernels = int((svd.s > 0).sum())
    report.kernels_per_channel = ones.tolist()
    report.macs_after, report.params_after = cost, count_params(layer)
    report.weighted_error = error


def _choose_layers(reports, cost, error, mac_ratio) -> list[str]:
    """Layers to convert: all where it saves MACs, or the cheapest in error per MAC saved
    until the budget is met."""
    if mac_ratio is None:
        return list(cost)
    candidates = [r for r in reports.values() if r.status != "skipped"]
    budget = mac_ratio * sum(r.macs_before for r in candidates)
    total = sum(r.macs_before for r in candidates)
    order = sorted(cost, key=lambda n: error[n] / (reports[n].macs_before - cost[n]))
    chosen = []
    for name in order:
        if total <= budget:
            break
        chosen.append(name)
        total -= reports[name].macs_before - cost[name]
    return chosen


__all__ = ["depthwise_separable"]
