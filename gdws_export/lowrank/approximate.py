"""Network-level low rank: replace a model's KxK convs by Tucker-2 or two-factor convs under
one MAC budget.

Every approximable conv l offers options: keep the conv (its MACs, no error); Tucker-2 with
any ranks (r_out, r_in) up to exact; the two-factor form with any rank r up to exact (which
forms, `method` says). Each option costs its MACs per image and carries the (weighted)
squared Frobenius error of its weight, exact for both forms (`factors`). The ranks of all
layers are then chosen together (`allocation.allocate`): least total error with the total
MACs of the approximable convs at most `mac_ratio` times their original MACs.

Errors of different layers must be on a comparable scale for the budget to trade them
sensibly, as with GDWS: alphas=None adds plain squared errors; `relative_gains` alphas (one
scale per layer) trade the fraction of each layer's weight energy dropped; per-channel alphas
make each layer's factorization minimize the alpha-weighted error itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from gdws_export.errors import BudgetOutOfReachError, InvalidInputError
from gdws_export.gdws.approximate import NOT_RUN
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.gdws.decomposition import check_alpha
from gdws_export.gdws.selection import ConvSite, find_convs, record_forward, replace_module
from gdws_export.lowrank.allocation import SOLVERS, allocate
from gdws_export.lowrank.conv import (
    ConvGeometry,
    LowRankConv2d,
    Tucker2Conv2d,
    conv_macs,
    lowrank_macs,
    tucker2_macs,
)
from gdws_export.lowrank.factors import (
    LowRankFactors,
    Tucker2Factors,
    lowrank_factors,
    tucker2_factors,
)
from gdws_export.lowrank.report import LowRankLayerReport, LowRankReport

METHODS = ("tucker2", "lowrank", "both")


@dataclass
class _Options:
    """One layer's options: index 0 the original conv, then every Tucker-2 rank pair
    (r_out-major), then every two-factor rank, as far as `method` offers them."""

    cost: torch.Tensor
    error: torch.Tensor
    tucker: Tucker2Factors | None
    lowrank: LowRankFactors | None
    scale: float  # a per-layer alpha, multiplying the factorization's error

    def label(self, k: int) -> tuple[str, tuple[int, ...]]:
        """("original" | "tucker2" | "lowrank", ranks) of option k."""
        if k == 0:
            return "original", ()
        k -= 1
        if self.tucker is not None:
            r0, r1 = self.tucker.max_ranks
            if k < r0 * r1:
                return "tucker2", (k // r1 + 1, k % r1 + 1)
            k -= r0 * r1
        return "lowrank", (k + 1,)


def approximate_lowrank(
    model: nn.Module,
    *,
    mac_ratio: float,
    method: str = "tucker2",
    alphas: Mapping[str, float | torch.Tensor] | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    solver: str = "auto",
) -> tuple[nn.Module, LowRankReport]:
    """Replace the KxK convs of `model` by low-rank convs; the input model is left untouched.

    Args:
        model: any `nn.Module`.
        mac_ratio: in (0, 1]: the approximable convs keep at most this fraction of their MACs
            per image (module docstring).
        method: "tucker2" (`Tucker2Conv2d`), "lowrank" (`LowRankConv2d`) or "both" (each
            layer takes whichever form the budget prefers).
        alphas: per-layer sensitivities keyed by module name: a number (scales the layer's
            error) or a (C,) per-input-channel tensor (`noise_gains`, `relative_gains`).
            None means unweighted.
        skip_first, include, exclude: which convs may be replaced (see
            `gdws_export.gdws.selection.find_convs`: first, 1x1 and depthwise convs are not).
        input_shape: (C, H, W) of one input. Defaults to `model.input_shape` when the model
            has that attribute (registry models do).
        solver: the rank allocator: "auto", "exact" or "greedy" (`allocation.allocate`).

    Returns:
        (new model, report). The new model is in the same train/eval mode as the input.

    Example:
        >>> small, report = approximate_lowrank(model, mac_ratio=0.5)   # doctest: +SKIP
        >>> print(report.table())                                       # doctest: +SKIP
    """
    mac_ratio = check_budget_ratio(mac_ratio, "mac_ratio")
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
    if solver not in SOLVERS:
        raise InvalidInputError(f"solver must be one of {SOLVERS}, got {solver!r}")
    input_shape = _resolve_input_shape(model, input_shape)
    sites = _sites(model, skip_first, include, exclude)
    sizes = _io_sizes(model, [s.name for s in sites], input_shape)
    sites = [s if s.name in sizes or s.skip_reason else replace(s, skip_reason=NOT_RUN)
             for s in sites]  # fmt: skip
    candidates = [s for s in sites if s.skip_reason is None]
    weights = _check_alphas(alphas, sites, candidates)
    options = {
        s.name: _layer_options(s.conv, sizes[s.name], method, *weights[s.name]) for s in candidates
    }
    choice, used = {}, None
    if candidates:
        budget = mac_ratio * sum(float(opt.cost[0]) for opt in options.values())
        _check_reachable(options, mac_ratio, method)
        found = allocate([o.cost for o in options.values()],
                         [o.error for o in options.values()], budget, solver=solver)  # fmt: skip
        choice, used = dict(zip(options, found.choice, strict=True)), found.solver
    new_model = copy.deepcopy(model)
    layers = []
    for site in sites:
        report = _layer_report(site, sizes.get(site.name, (0, 0)))
        if site.skip_reason is None:
            opt = options[site.name]
            _replace(new_model, site, opt, *opt.label(choice[site.name]), report)
        layers.append(report)
    return new_model, LowRankReport(
        mac_ratio=mac_ratio,
        method=method,
        input_shape=input_shape,
        weighted=alphas is not None,
        layers=layers,
        solver=used,
    )


def _check_reachable(options: Mapping[str, _Options], mac_ratio: float, method: str) -> None:
    """Refuse a MAC ratio below what the cheapest option of every conv keeps, saying how low
    it can go (the search probes there instead)."""
    total = sum(float(opt.cost[0]) for opt in options.values())
    cheapest = sum(float(opt.cost.min()) for opt in options.values())
    if cheapest > mac_ratio * total * (1 + 1e-12):
        raise BudgetOutOfReachError(
            f"mac_ratio {mac_ratio:g} is out of reach for {method}: the cheapest option of every "
            f"approximable conv keeps {cheapest / total:.4f} of their MACs; pass a larger ratio",
            reachable=cheapest / total,
        )


def _layer_options(
    conv: nn.Conv2d,
    pixels: tuple[int, int],
    method: str,
    scale: float,
    alpha: torch.Tensor | None,
) -> _Options:
    """Every option of one conv, with its MACs per image and its weighted error."""
    geometry = ConvGeometry.of(conv)
    in_pixels, out_pixels = pixels
    costs = [torch.tensor([float(conv_macs(geometry, out_pixels))], dtype=torch.float64)]
    errors = [torch.zeros(1, dtype=torch.float64)]
    tucker = low = None
    if method in ("tucker2", "both"):
        tucker = tucker2_factors(conv.weight, conv.groups, alpha)
        r0, r1 = tucker.max_ranks
        ranks = (torch.arange(1, r0 + 1)[:, None], torch.arange(1, r1 + 1)[None, :])
        costs.append(tucker2_macs(geometry, ranks, in_pixels, out_pixels).reshape(-1).double())
        errors.append(tucker.errors().reshape(-1) * scale)
    if method in ("lowrank", "both"):
        low = lowrank_factors(conv.weight, conv.groups, alpha)
        ranks = torch.arange(1, low.max_rank + 1)
        costs.append(lowrank_macs(geometry, ranks, out_pixels).double())
        errors.append(low.errors() * scale)
    return _Options(torch.cat(costs), torch.cat(errors), tucker, low, scale)


def _replace(
    model: nn.Module,
    site: ConvSite,
    opt: _Options,
    form: str,
    ranks: tuple[int, ...],
    report: LowRankLayerReport,
) -> None:
    """Swap one conv for the chosen form and fill in its report."""
    conv = site.conv
    if form == "original":
        report.status, report.reason = "original", "the budget pays for the original conv"
        return
    if form == "tucker2":
        module = Tucker2Conv2d.from_conv(conv, ranks, factors=opt.tucker)
        report.max_ranks = list(opt.tucker.max_ranks)
    else:
        module = LowRankConv2d.from_conv(conv, ranks[0], factors=opt.lowrank)
        report.max_ranks = [opt.lowrank.max_rank]
    module.weighted_error *= opt.scale
    weight = conv.weight.detach().double()
    energy = float(weight.pow(2).sum())
    dropped = float((module.dense_weight().double() - weight).pow(2).sum())
    report.status, report.ranks = form, list(ranks)
    report.macs_after = module.macs(report.in_pixels, report.out_pixels)
    report.params_after = sum(p.numel() for p in module.parameters())
    report.weighted_error = module.weighted_error
    report.relative_error = dropped / energy if energy > 0 else 0.0
    replace_module(model, site.name, module)


def _layer_report(site: ConvSite, pixels: tuple[int, int]) -> LowRankLayerReport:
    """The report of a conv left as it is (the replacement fills in the rest)."""
    conv = site.conv
    macs = conv_macs(ConvGeometry.of(conv), pixels[1])
    params = sum(p.numel() for p in conv.parameters())
    return LowRankLayerReport(
        name=site.name,
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=tuple(conv.kernel_size),
        groups=conv.groups,
        status="skipped" if site.skip_reason else "original",
        reason=site.skip_reason or "",
        in_pixels=pixels[0],
        out_pixels=pixels[1],
        macs_before=macs,
        macs_after=macs,
        params_before=params,
        params_after=params,
    )


def _sites(model: nn.Module, skip_first: bool, include, exclude) -> list[ConvSite]:
    """`find_convs`, with the convs inside low-rank layers skipped (already factored)."""
    sites = find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
    inside = tuple(
        name + "."
        for name, module in model.named_modules()
        if isinstance(module, (Tucker2Conv2d, LowRankConv2d))
    )
    return [
        replace(s, skip_reason="part of a low-rank layer")
        if inside and s.name.startswith(inside) and s.skip_reason is None
        else s
        for s in sites
    ]


def _io_sizes(
    model: nn.Module, names: Sequence[str], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, int]]:
    """(input pixels, output pixels) of each named conv that runs on one (C, H, W) input."""
    return record_forward(
        model, names, input_shape,
        lambda _m, inputs, out: (math.prod(inputs[0].shape[-2:]), math.prod(out.shape[-2:])),
    )  # fmt: skip


def _check_alphas(alphas, sites, candidates) -> dict[str, tuple[float, torch.Tensor | None]]:
    """Per approximable layer (error scale, per-channel alpha or None)."""
    if alphas is None:
        return {s.name: (1.0, None) for s in candidates}
    unknown = sorted(set(alphas) - {s.name for s in sites})
    if unknown:
        raise InvalidInputError(
            f"alphas name layer {unknown[0]!r}, which is not a conv of this model; "
            "were they computed for another model?"
        )
    weights = {}
    for site in candidates:
        if site.name not in alphas:
            raise InvalidInputError(
                f"alphas have no entry for layer {site.name!r}; give every approximable "
                "layer one, or pass alphas=None"
            )
        value = alphas[site.name]
        if isinstance(value, torch.Tensor) and value.numel() > 1:
            weights[site.name] = (1.0, check_alpha(value, site.conv.in_channels, site.name))
        else:
            scale = float(value)
            if not math.isfinite(scale) or scale < 0:
                raise InvalidInputError(f"alpha of layer {site.name!r} must be >= 0, got {value}")
            weights[site.name] = (scale, None)
    return weights


def _resolve_input_shape(model: nn.Module, input_shape) -> tuple[int, ...]:
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        raise InvalidInputError(
            "approximate_lowrank needs the input shape: pass input_shape=(C, H, W) "
            "(registry models carry it as model.input_shape)"
        )
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"input_shape must be (C, H, W) of positive sizes, got {shape}")
    return shape
