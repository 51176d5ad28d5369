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

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.approximate import ApproximationReport, LayerReport
from gdws_export.gdws.conv import GDWSConv2d, conv_macs_per_pixel
from gdws_export.gdws.decomposition import channel_svd, check_alpha, error_values, weighted_error
from gdws_export.gdws.selection import find_convs, output_sizes, replace_module


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
    if mac_ratio is not None and (
        isinstance(mac_ratio, bool)
        or not isinstance(mac_ratio, (int, float))
        or not 0 < mac_ratio <= 1
    ):
        raise InvalidInputError(f"mac_ratio must be in (0, 1] or None, got {mac_ratio!r}")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        raise InvalidInputError("pass input_shape=(C, H, W) (registry models carry it)")
    shape = tuple(int(d) for d in input_shape)
    sites = find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
    sizes = output_sizes(model, [s.name for s in sites], shape)
    reports, cost, error, svds = {}, {}, {}, {}
    for site in sites:
        conv = site.conv
        pixels = sizes[site.name][0] * sizes[site.name][1]
        report = LayerReport(
            name=site.name, in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size), groups=conv.groups, status="skipped",
            reason=site.skip_reason or "", pixels=pixels,
            macs_before=conv_macs_per_pixel(conv) * pixels, params_before=_params(conv),
        )  # fmt: skip
        report.macs_after, report.params_after = report.macs_before, report.params_before
        reports[site.name] = report
        if site.skip_reason is not None:
            continue
        alpha = check_alpha(None if alphas is None else alphas.get(site.name), conv.in_channels,
                            site.name)  # fmt: skip
        moment = None if input_moments is None else input_moments.get(site.name)
        svd = svds[site.name] = channel_svd(conv.weight, conv.groups, moment)
        ones = torch.ones(conv.in_channels, dtype=torch.long)
        error[site.name] = weighted_error(error_values(svd, alpha), ones)
        kh, kw = conv.kernel_size
        cost[site.name] = conv.in_channels * (kh * kw + conv.out_channels // conv.groups) * pixels
        report.status, report.reason = "original", "not converted (MAC budget met without it)"
        if cost[site.name] >= report.macs_before:
            report.reason = f"separable form would cost {cost[site.name]:,} MACs"
            del cost[site.name]
    convert = _choose_layers(reports, cost, error, mac_ratio)
    new_model = copy.deepcopy(model)
    for name in convert:
        conv = model.get_submodule(name)
        ones = torch.ones(conv.in_channels, dtype=torch.long)
        layer = GDWSConv2d._build(conv, svds[name], ones, error[name])
        replace_module(new_model, name, layer.train(conv.training))
        report = reports[name]
        report.status, report.reason = "gdws", ""
        report.kernels = layer.kernels
        report.full_rank_kernels = int((svds[name].s > 0).sum())
        report.kernels_per_channel = ones.tolist()
        report.macs_after, report.params_after = cost[name], _params(layer)
        report.weighted_error = error[name]
    return new_model, ApproximationReport(
        beta=None, mac_ratio=mac_ratio, input_shape=shape, weighted=alphas is not None,
        layers=list(reports.values()),
    )  # fmt: skip


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


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["depthwise_separable"]
