"""Network-level GDWS: replace a model's KxK convs under a per-layer error bound or a MAC budget.

Two ways to say how much to approximate:

- `beta` (the paper's setting): every approximable conv gets LEGO with the same error bound
  beta, each with its own alphas: the fewest kernels whose weighted error is <= beta.
- `mac_ratio`: a whole-network complexity target. The convs GDWS may replace must together
  cost at most `mac_ratio` times their original MACs per image. Every kept kernel (c, i) of
  layer l costs w_l = (Kh*Kw + M/groups) * H_out * W_out MACs and removes
  alpha_c * s_{c,i}^2 of weighted error, so the budget is spent greedily on the kernels that
  remove the most weighted error per MAC, across all layers at once (the solution of the
  Lagrangian relaxation of the budgeted problem). Every layer keeps at least its best kernel.
  A layer whose GDWS form would cost as much as its original conv keeps the original conv
  instead (error 0, fewer MACs) and the budget it frees is spent again, until no layer
  changes. Alphas of different layers must be on a comparable scale for this to be
  meaningful; with alphas=None every layer is weighted by its plain squared Frobenius error.

In both modes a layer where GDWS would cost at least as many MACs as the original conv keeps
the original, and the report says so.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d, conv_macs_per_pixel
from gdws_export.gdws.decomposition import (
    ChannelSVD,
    channel_svd,
    check_alpha,
    check_beta,
    error_values,
    lego,
    mego,
    weighted_error,
)
from gdws_export.gdws.selection import find_convs, output_sizes, replace_module


@dataclass
class LayerReport:
    """What `approximate` did to one conv.

    `status` is "gdws" (replaced), "original" (GDWS would cost more, the conv was kept) or
    "skipped" (not approximable, see `reason`). MACs are per image when the input shape is
    known (`pixels` > 0), else per output pixel.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    groups: int
    status: str
    reason: str = ""
    kernels: int = 0
    full_rank_kernels: int = 0
    kernels_per_channel: list[int] = field(default_factory=list)
    pixels: int = 0
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    weighted_error: float = 0.0


@dataclass
class ApproximationReport:
    """Per-layer report of `approximate`, with the settings that produced it."""

    beta: float | None
    mac_ratio: float | None
    input_shape: tuple[int, ...] | None
    weighted: bool
    layers: list[LayerReport]

    @property
    def replaced(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.status == "gdws"]

    @property
    def macs_before(self) -> int:
        """MACs of the convs GDWS was allowed to replace, before."""
        return sum(layer.macs_before for layer in self.layers if layer.status != "skipped")

    @property
    def macs_after(self) -> int:
        """MACs of the same convs after (original convs kept count at full cost)."""
        return sum(layer.macs_after for layer in self.layers if layer.status != "skipped")

    @property
    def achieved_mac_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["macs_before"] = self.macs_before
        data["macs_after"] = self.macs_after
        data["achieved_mac_ratio"] = self.achieved_mac_ratio
        return data

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping) -> ApproximationReport:
        layers = [
            LayerReport(**{**layer, "kernel_size": tuple(layer["kernel_size"])})
            for layer in data["layers"]
        ]
        shape = data["input_shape"]
        return cls(
            beta=data["beta"],
            mac_ratio=data["mac_ratio"],
            input_shape=tuple(shape) if shape is not None else None,
            weighted=data["weighted"],
            layers=layers,
        )

    def table(self) -> str:
        """A Markdown table, one row per conv."""
        unit = "MACs" if self.input_shape else "MACs/pixel"
        rows = [
            f"| layer | shape | status | kernels | {unit} before | {unit} after | weighted error |",
            "|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            shape = (
                f"{layer.out_channels}x{layer.in_channels // layer.groups}"
                f"x{layer.kernel_size[0]}x{layer.kernel_size[1]}"
            )
            kernels = f"{layer.kernels}/{layer.full_rank_kernels}" if layer.kernels else ""
            status = layer.status + (f" ({layer.reason})" if layer.reason else "")
            rows.append(
                f"| {layer.name} | {shape} | {status} | {kernels} | {layer.macs_before:,} "
                f"| {layer.macs_after:,} | {layer.weighted_error:.4g} |"
            )
        rows.append(
            f"| total (approximable convs) | | | | {self.macs_before:,} | {self.macs_after:,} "
            f"| ratio {self.achieved_mac_ratio:.3f} |"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def approximate(
    model: nn.Module,
    *,
    beta: float | None = None,
    mac_ratio: float | None = None,
    alphas: Mapping[str, torch.Tensor] | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> tuple[nn.Module, ApproximationReport]:
    """Replace the KxK convs of `model` by GDWS convs; the input model is left untouched.

    Args:
        model: any `nn.Module`.
        beta: per-layer weighted error bound (LEGO on every layer). Exactly one of `beta` and
            `mac_ratio`.
        mac_ratio: in (0, 1]: the approximable convs keep at most this fraction of their MACs
            (a global kernel budget, see the module docstring). Needs the input shape.
        alphas: per-layer, per-input-channel sensitivities (from `noise_gains` or
            `load_alphas`), keyed by module name. None means unweighted (all ones).
        skip_first, include, exclude: which convs may be replaced (see `find_convs`).
        input_shape: (C, H, W) of one input. Defaults to `model.input_shape` when the model
            has that attribute (registry models do). Needed for `mac_ratio`; otherwise it only
            turns MACs per pixel into MACs per image in the report.

    Returns:
        (new model, report). The new model is in the same train/eval mode as the input.

    Example:
        >>> gdws_model, report = approximate(model, mac_ratio=0.5)   # doctest: +SKIP
        >>> print(report.table())                                    # doctest: +SKIP
    """
    if (beta is None) == (mac_ratio is None):
        raise InvalidInputError("give exactly one of beta (error bound) or mac_ratio (MAC budget)")
    if beta is not None:
        beta = check_beta(beta)
    if mac_ratio is not None:
        mac_ratio = _check_mac_ratio(mac_ratio)
    input_shape = _resolve_input_shape(model, input_shape, required=mac_ratio is not None)

    sites = find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
    candidates = [s for s in sites if s.skip_reason is None]
    alpha_of = _check_alphas(alphas, sites)
    pixels = {s.name: 1 for s in sites}
    if input_shape is not None:
        sizes = output_sizes(model, [s.name for s in sites], input_shape)
        pixels = {name: h * w for name, (h, w) in sizes.items()}

    svds = {s.name: channel_svd(s.conv.weight, s.conv.groups) for s in candidates}
    values = {s.name: error_values(svds[s.name], alpha_of[s.name]) for s in candidates}
    keep_original: set[str] = set()
    if beta is not None:
        counts = {name: lego(v, beta) for name, v in values.items()}
    elif candidates:
        counts, keep_original = _allocate_budget(candidates, values, pixels, mac_ratio)

    new_model = copy.deepcopy(model)
    layers = []
    for site in sites:
        conv = site.conv
        report = LayerReport(
            name=site.name,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            groups=conv.groups,
            status="skipped",
            reason=site.skip_reason or "",
            pixels=pixels[site.name] if input_shape is not None else 0,
            macs_before=conv_macs_per_pixel(conv) * pixels[site.name],
            params_before=_params(conv),
        )
        report.macs_after, report.params_after = report.macs_before, report.params_before
        if site.skip_reason is None:
            name = site.name
            keep = name in keep_original
            _replace(new_model, site, svds[name], values[name], counts[name], report, keep)
        layers.append(report)
    report = ApproximationReport(
        beta=beta,
        mac_ratio=mac_ratio,
        input_shape=tuple(input_shape) if input_shape is not None else None,
        weighted=alphas is not None,
        layers=layers,
    )
    return new_model, report


def _replace(
    model: nn.Module,
    site,
    svd: ChannelSVD,
    values: torch.Tensor,
    counts: torch.Tensor,
    report: LayerReport,
    keep_original: bool = False,
) -> None:
    """Swap one conv for its GDWS form, unless that costs at least as many MACs."""
    gdws = GDWSConv2d._build(site.conv, svd, counts, weighted_error(values, counts))
    report.kernels = gdws.kernels
    report.full_rank_kernels = int((svd.s > 0).sum())
    report.kernels_per_channel = counts.tolist()
    pixels = max(report.pixels, 1)
    if keep_original:
        report.status = "original"
        report.reason = "the MAC budget pays for the original conv"
        return
    if gdws.macs_per_pixel * pixels >= report.macs_before:
        report.status = "original"
        report.reason = (
            f"GDWS would cost {gdws.macs_per_pixel * pixels:,} MACs >= {report.macs_before:,}"
        )
        return
    report.status = "gdws"
    report.macs_after = gdws.macs_per_pixel * pixels
    report.params_after = _params(gdws)
    report.weighted_error = gdws.weighted_error
    gdws.train(site.conv.training)
    replace_module(model, site.name, gdws)


def _allocate_budget(
    candidates, values, pixels, mac_ratio
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Kernel counts of every candidate layer under the global MAC budget (module docstring),
    and the layers that keep their original conv.

    The greedy works on units: for a plain conv a unit is one kernel; for a grouped conv it is
    one more kernel in every group (the best remaining one of each), because a grouped PW conv
    pads all groups to the largest one, so uneven groups would cost MACs for nothing.
    """
    original = {s.name: conv_macs_per_pixel(s.conv) * pixels[s.name] for s in candidates}
    units = {s.name: _units(s.conv, values[s.name], pixels[s.name]) for s in candidates}
    budget = mac_ratio * sum(original.values())
    taken: dict[str, int] = {}  # units per layer, kept from the pass that last saw the layer
    kept_original: set[str] = set()
    while True:
        active = [s.name for s in candidates if s.name not in kept_original]
        left = budget - sum(original[n] for n in kept_original)
        left -= sum(units[n][1] for n in active)  # every layer's forced best unit
        if left < 0:
            raise InvalidInputError(
                f"mac_ratio {mac_ratio} is too small: even one kernel per layer needs "
                f"{(budget - left) / sum(original.values()):.4f} of the MACs"
            )
        taken.update(_greedy_units(active, units, left))
        newly_original = {n for n in active if taken[n] * units[n][1] >= original[n]}
        if not newly_original:
            break
        kept_original |= newly_original
    counts = {s.name: _unit_counts(s.conv, values[s.name], taken[s.name]) for s in candidates}
    # Budget the greedy pass left unspent may pay for whole original convs (zero error):
    # revert the layers with the largest error first while the total still fits.
    cost = {n: taken[n] * units[n][1] for n in active}
    total = sum(cost.values()) + sum(original[n] for n in kept_original)
    for name in sorted(active, key=lambda n: -weighted_error(values[n], counts[n])):
        if total - cost[name] + original[name] <= budget:
            total += original[name] - cost[name]
            kept_original.add(name)
    return counts, kept_original


def _units(conv: nn.Conv2d, values: torch.Tensor, pixels: int) -> tuple[torch.Tensor, int]:
    """(error removed by each successive unit, descending; MACs per unit) of one layer."""
    kh, kw = conv.kernel_size
    groups = conv.groups
    per_group = values.reshape(groups, -1).sort(dim=1, descending=True).values
    return per_group.sum(dim=0), groups * (kh * kw + conv.out_channels // groups) * pixels


def _unit_counts(conv: nn.Conv2d, values: torch.Tensor, units: int) -> torch.Tensor:
    """Kernels per channel when every group keeps its `units` best kernels."""
    groups = conv.groups
    per_group = values.reshape(groups, -1, values.shape[1])
    return torch.cat([mego(v, units) for v in per_group])


def _greedy_units(active, units, budget: float) -> dict[str, int]:
    """Units per layer: the first is forced, the rest bought by error removed per MAC."""
    ratios, costs, owners = [], [], []
    for layer, name in enumerate(active):
        gains, cost = units[name]
        ratios.append(gains[1:] / cost)
        costs.append(torch.full((len(gains) - 1,), float(cost), dtype=torch.float64))
        owners.append(torch.full((len(gains) - 1,), layer))
    ratio, cost, owner = torch.cat(ratios), torch.cat(costs), torch.cat(owners)
    order = torch.argsort(ratio, descending=True, stable=True)
    order = order[ratio[order] > 0]  # a unit that removes no error is not worth any MACs
    bought = order[torch.cumsum(cost[order], 0) <= budget]
    extra = torch.bincount(owner[bought], minlength=len(active))
    return {name: 1 + int(extra[layer]) for layer, name in enumerate(active)}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_mac_ratio(mac_ratio: float) -> float:
    if (
        isinstance(mac_ratio, bool)
        or not isinstance(mac_ratio, (int, float))
        or not math.isfinite(mac_ratio)
        or not 0 < mac_ratio <= 1
    ):
        raise InvalidInputError(f"mac_ratio must be in (0, 1], got {mac_ratio!r}")
    return float(mac_ratio)


def _resolve_input_shape(model, input_shape, *, required: bool) -> tuple[int, ...] | None:
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        if required:
            raise InvalidInputError(
                "mac_ratio needs the input shape: pass input_shape=(C, H, W) "
                "(registry models carry it as model.input_shape)"
            )
        return None
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"input_shape must be (C, H, W) of positive sizes, got {shape}")
    return shape


def _check_alphas(alphas, sites) -> dict[str, torch.Tensor | None]:
    candidates = [s for s in sites if s.skip_reason is None]
    if alphas is None:
        return {s.name: None for s in candidates}
    names = {s.name for s in candidates}
    unknown = sorted(set(alphas) - {s.name for s in sites})
    if unknown:
        raise InvalidInputError(
            f"alphas name layer {unknown[0]!r}, which is not a conv of this model; "
            "were they computed for another model?"
        )
    missing = sorted(names - set(alphas))
    if missing:
        raise InvalidInputError(
            f"alphas have no entry for layer {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; compute them for the same layers (noise_gains) or pass alphas=None"
        )
    return {s.name: check_alpha(alphas[s.name], s.conv.in_channels, s.name) for s in candidates}
