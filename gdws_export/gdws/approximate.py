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

Both budgets are solved the same way, by Lagrangian relaxation: for a price lam per unit of
cost, every layer independently takes the option (original conv; the best G kernels for each
G; S kernels in every channel) with the least `weighted error + lam * cost`, and lam is the
smallest price whose choices fit the budget. Within a layer, the best G kernels are the G
with the largest alpha_c * s_{c,i}^2 (MEGO), so a layer keeps exactly the kernels that remove
more error per unit of cost than lam: kernels are bought by error removed per MAC (or per
millisecond) across all layers at once, and a layer whose GDWS form would not remove enough
error for its cost keeps the original conv (error 0). What the price leaves of the budget
buys the next-best kernels, in that order, until the next one does not fit. Alphas of
different layers must be on a comparable scale for this to be meaningful; with alphas=None
every layer is weighted by its plain squared Frobenius error.

`align` prices kernels the way the lowering runs them: it pads each layer's kernel count to a
multiple of 8 or 16 with zero kernels, so G kernels cost what ceil(G / align) * align do, and
the budget fills that room with real kernels instead (same time, less error).

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
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

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
from gdws_export.gdws.selection import ConvSite, find_convs, output_sizes, replace_module

# The default max_layer_error of time budgets (module docstring); MAC budgets default to none.
TIME_MAX_LAYER_ERROR = 0.35
# Skip reason of a conv the forward did not reach at the probe input.
NOT_RUN = "did not run on the probe input (a data-dependent branch or an unused layer)"
# Error added per unit of error above the cap: larger than any error the budget could trade.
_OVER_CAP_PENALTY = 1e6


@dataclass(frozen=True)
class LayerCost:
    """What one conv costs, in any unit that adds up over layers (milliseconds, MACs).

    Attributes:
        original: the original conv.
        fixed, per_kernel: a GDWS form with G kernels, any counts per channel, costs
            `fixed + per_kernel * G` (the reference lowering: channel Gather, depthwise, 1x1).
        slot_fixed, per_slot: optional; a GDWS form where every channel keeps the same number
            S of kernels costs `slot_fixed + per_slot * S` (the `slots` lowering, which needs no
            Gather and is cheaper per kernel on ONNX Runtime). None: not offered.
    """

    original: float
    fixed: float
    per_kernel: float
    slot_fixed: float | None = None
    per_slot: float | None = None


@dataclass
class LayerReport:
    """What `approximate` did to one conv.

    `status` is "gdws" (replaced), "original" (GDWS would cost more, the conv was kept) or
    "skipped" (not approximable, see `reason`). MACs are per image when the input shape is
    known (`pixels` > 0), else per output pixel. With `time_ratio`, `cost_before` and
    `cost_after` are the layer's `LayerCost` before and after (predicted, in its unit).
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
    cost_before: float | None = None
    cost_after: float | None = None


@dataclass
class ApproximationReport:
    """Per-layer report of `approximate`, with the settings that produced it."""

    beta: float | None
    mac_ratio: float | None
    input_shape: tuple[int, ...] | None
    weighted: bool
    layers: list[LayerReport]
    time_ratio: float | None = None
    max_layer_error: float | None = None  # the cap the budget respected (None: no cap)

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

    @property
    def predicted_time_ratio(self) -> float | None:
        """With `time_ratio`: the approximable convs' predicted cost after over before."""
        if self.time_ratio is None:
            return None
        layers = [layer for layer in self.layers if layer.status != "skipped"]
        before = sum(layer.cost_before for layer in layers)
        return sum(layer.cost_after for layer in layers) / before if before else 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["macs_before"] = self.macs_before
        data["macs_after"] = self.macs_after
        data["achieved_mac_ratio"] = self.achieved_mac_ratio
        data["predicted_time_ratio"] = self.predicted_time_ratio
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
            time_ratio=data.get("time_ratio"),
            max_layer_error=data.get("max_layer_error"),
        )

    def table(self) -> str:
        """A Markdown table, one row per conv (with `time_ratio`, the predicted costs too)."""
        unit = "MACs" if self.input_shape else "MACs/pixel"
        timed = self.time_ratio is not None
        cost_head = " cost before | cost after |" if timed else ""
        rows = [
            f"| layer | shape | status | kernels | {unit} before | {unit} after |{cost_head}"
            " weighted error |",
            "|---|---|---|---|---|---|" + ("---|---|" if timed else "") + "---|",
        ]
        for layer in self.layers:
            shape = (
                f"{layer.out_channels}x{layer.in_channels // layer.groups}"
                f"x{layer.kernel_size[0]}x{layer.kernel_size[1]}"
            )
            kernels = f"{layer.kernels}/{layer.full_rank_kernels}" if layer.kernels else ""
            status = layer.status + (f" ({layer.reason})" if layer.reason else "")
            costs = ""
            if timed:
                costs = (
                    " "
                    + " | ".join(
                        "" if c is None else f"{c:.4g}"
                        for c in (layer.cost_before, layer.cost_after)
                    )
                    + " |"
                )
            rows.append(
                f"| {layer.name} | {shape} | {status} | {kernels} | {layer.macs_before:,} "
                f"| {layer.macs_after:,} |{costs} {layer.weighted_error:.4g} |"
            )
        ratio = f" ratio {self.predicted_time_ratio:.3f} | |" if timed else ""
        rows.append(
            f"| total (approximable convs) | | | | {self.macs_before:,} | {self.macs_after:,} "
            f"|{ratio} ratio {self.achieved_mac_ratio:.3f} |"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def approximate(
    model: nn.Module,
    *,
    beta: float | None = None,
    mac_ratio: float | None = None,
    time_ratio: float | None = None,
    layer_costs: Mapping[str, LayerCost] | None = None,
    alphas: Mapping[str, torch.Tensor] | None = None,
    input_moments: Mapping[str, torch.Tensor] | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    max_layer_error: float | None = None,
    align: int = 1,
) -> tuple[nn.Module, ApproximationReport]:
    """Replace the KxK convs of `model` by GDWS convs; the input model is left untouched.

    Args:
        model: any `nn.Module`.
        beta: per-layer weighted error bound (LEGO on every layer). Exactly one of `beta`,
            `mac_ratio` and `time_ratio`.
        mac_ratio: in (0, 1]: the approximable convs keep at most this fraction of their MACs
            (a global kernel budget, see the module docstring). Needs the input shape.
        time_ratio: in (0, 1]: the same budget priced by `layer_costs` (measured time).
        layer_costs: with `time_ratio`, a `LayerCost` for every approximable conv, by name
            (`gdws_export.lowering.measure_layer_costs` measures them).
        alphas: per-layer, per-input-channel sensitivities (from `noise_gains` or
            `load_alphas`), keyed by module name. None means unweighted (all ones).
        input_moments: per-layer (C, K, K) patch second moments (`input_moments`), keyed by
            module name: each layer's SVD then minimizes the expected output error instead of
            the weight error (activation-aware; pair with `activation_gains` alphas). None:
            the paper's SVD.
        skip_first, include, exclude: which convs may be replaced (see `find_convs`).
        input_shape: (C, H, W) of one input. Defaults to `model.input_shape` when the model
            has that attribute (registry models do). Needed for `mac_ratio`; otherwise it only
            turns MACs per pixel into MACs per image in the report.
        max_layer_error: in (0, 1]: with `mac_ratio` or `time_ratio`, no layer keeps more
            than this share of its weighted error (see the module docstring; soft where the
            budget cannot be met otherwise). None: `TIME_MAX_LAYER_ERROR` (0.35) for a time
            budget, no cap for a MAC budget; 1 turns the cap off.
        align: the lowering pads each GDWS layer's kernel count to a multiple of `align`
            with zero kernels (ONNX Runtime's blocked layout needs 8 or 16, see
            `gdws_export.lowering`); real kernels can fill that room at no cost in time.
            Budgets price G kernels as G rounded up to such a multiple (a grouped conv: its
            per-group count, as the lowering pads it), so they buy whole blocks; with `beta`,
            a plain conv's next-best kernels fill its last block. 1: every kernel priced alone.

    Returns:
        (new model, report). The new model is in the same train/eval mode as the input.

    Example:
        >>> gdws_model, report = approximate(model, mac_ratio=0.5)   # doctest: +SKIP
        >>> print(report.table())                                    # doctest: +SKIP
    """
    if sum(x is not None for x in (beta, mac_ratio, time_ratio)) != 1:
        raise InvalidInputError(
            "give exactly one of beta (error bound), mac_ratio (MAC budget) "
            "or time_ratio (time budget)"
        )
    if (time_ratio is None) != (layer_costs is None):
        raise InvalidInputError("time_ratio and layer_costs go together: give both or neither")
    if beta is not None:
        beta = check_beta(beta)
    if mac_ratio is not None:
        mac_ratio = _check_ratio(mac_ratio, "mac_ratio")
    if time_ratio is not None:
        time_ratio = _check_ratio(time_ratio, "time_ratio")
    if max_layer_error is not None:
        if beta is not None:
            raise InvalidInputError("max_layer_error applies to mac_ratio and time_ratio, not beta")
        max_layer_error = _check_ratio(max_layer_error, "max_layer_error")
    elif time_ratio is not None:
        max_layer_error = TIME_MAX_LAYER_ERROR
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise InvalidInputError(f"align must be a positive int, got {align!r}")
    input_shape = _resolve_input_shape(model, input_shape, required=mac_ratio is not None)

    sites = find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
    pixels = {s.name: 1 for s in sites}
    if input_shape is not None:
        sizes = output_sizes(model, [s.name for s in sites], input_shape)
        pixels = {s.name: math.prod(sizes.get(s.name, (0, 0))) for s in sites}
        sites = [_mark_not_run(s, sizes) for s in sites]
    candidates = [s for s in sites if s.skip_reason is None]
    alpha_of = _check_alphas(alphas, sites)

    moment_of = _check_layer_map(input_moments, sites, "input_moments", "input_moments")
    svds = {s.name: channel_svd(s.conv.weight, s.conv.groups, moment_of[s.name])
            for s in candidates}  # fmt: skip
    values = {s.name: error_values(svds[s.name], alpha_of[s.name]) for s in candidates}
    keep_original: set[str] = set()
    spent: dict[str, float] = {}
    costs: dict[str, LayerCost] = {}
    if time_ratio is not None:
        costs = _check_layer_costs(layer_costs, candidates)
    elif mac_ratio is not None:
        costs = {s.name: _mac_cost(s.conv, pixels[s.name]) for s in candidates}
    if beta is not None:
        counts = {
            s.name: _aligned_counts(s.conv, values[s.name], lego(values[s.name], beta), align)
            for s in candidates
        }
    elif candidates:
        ratio = mac_ratio if mac_ratio is not None else time_ratio
        counts, keep_original, spent = _allocate_budget(
            candidates, values, costs, ratio, max_layer_error, align
        )

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
            _replace(
                new_model, site, svds[name], values[name], counts[name], report, keep,
                check_macs=time_ratio is None,
            )  # fmt: skip
            if time_ratio is not None:
                report.cost_before = costs[name].original
                report.cost_after = spent[name] if report.status == "gdws" else report.cost_before
        layers.append(report)
    report = ApproximationReport(
        beta=beta,
        mac_ratio=mac_ratio,
        input_shape=tuple(input_shape) if input_shape is not None else None,
        weighted=alphas is not None,
        layers=layers,
        time_ratio=time_ratio,
        max_layer_error=max_layer_error,
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
    check_macs: bool = True,
) -> None:
    """Swap one conv for its GDWS form, unless the budget keeps the original or (with
    `check_macs`) the GDWS form costs at least as many MACs. A time budget has already
    compared measured costs, which is what matters there."""
    gdws = GDWSConv2d._build(site.conv, svd, counts, weighted_error(values, counts))
    report.kernels = gdws.kernels
    report.full_rank_kernels = int((svd.s > 0).sum())
    report.kernels_per_channel = counts.tolist()
    pixels = max(report.pixels, 1)
    if keep_original:
        report.status = "original"
        report.reason = "the budget pays for the original conv"
        return
    if check_macs and gdws.macs_per_pixel * pixels >= report.macs_before:
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
    candidates,
    values,
    costs: Mapping[str, LayerCost],
    ratio: float,
    cap: float | None = None,
    align: int = 1,
) -> tuple[dict[str, torch.Tensor], set[str], dict[str, float]]:
    """Kernel counts of every candidate layer under the global budget (module docstring),
    the layers that keep their original conv, and what each layer's choice costs.

    For a plain conv the G-kernel options add one kernel at a time; for a grouped conv, one
    more kernel in every group (the best remaining one of each), because a grouped PW conv
    pads all groups to the largest one, so uneven groups would cost for nothing.
    """
    options = {
        s.name: _options(s.conv, values[s.name], costs[s.name], cap, align) for s in candidates
    }
    budget = ratio * sum(costs[s.name].original for s in candidates)
    cheapest = sum(float(opt.cost.min()) for opt in options.values())
    if cheapest > budget * (1 + 1e-12):
        raise InvalidInputError(
            f"the budget ratio {ratio} is too small: the cheapest choice for every layer ("
            f"{'one kernel' if align == 1 else f'{align} kernels (align)'}, or the original "
            f"conv where that costs less) needs "
            f"{cheapest / (budget / ratio):.4f} of the cost"
        )
    choice = _lagrangian_choice(options, budget)
    choice = _fill_leftover(options, choice, budget)
    counts, kept_original, spent = {}, set(), {}
    for site in candidates:
        opt, k = options[site.name], choice[site.name]
        kind = opt.kind[k]
        spent[site.name] = float(opt.cost[k])
        if kind == "original":
            kept_original.add(site.name)
            k = 1 + int(torch.argmin(opt.error[1 : 1 + opt.units]))  # report: a full GDWS
            kind = "units"
        amount = int(opt.amount[k])
        if kind == "units":
            counts[site.name] = _unit_counts(site.conv, values[site.name], amount)
        else:
            counts[site.name] = torch.full(
                (site.conv.in_channels,), min(amount, values[site.name].shape[1]),
                dtype=torch.long,
            )  # fmt: skip
    return counts, kept_original, spent


@dataclass
class _Options:
    """One layer's choices: index 0 the original conv, then 1..units the best G-kernel forms
    (G = `amount` units), then uniform forms (`amount` kernels in every channel)."""

    kind: list[str]
    amount: torch.Tensor
    cost: torch.Tensor
    error: torch.Tensor
    units: int


def _options(
    conv: nn.Conv2d,
    values: torch.Tensor,
    cost: LayerCost,
    cap: float | None = None,
    align: int = 1,
) -> _Options:
    """A layer's options; with `cap`, error beyond cap * (the error of dropping everything)
    is priced at `_OVER_CAP_PENALTY` per unit, so the budget takes it only when it must.
    G kernels are priced as G rounded up to a multiple of `align` (`_unit_step`)."""
    gains = _unit_gains(conv, values).double()
    total = float(values.double().sum())
    units = torch.arange(1, len(gains) + 1)
    unit_cost = cost.per_kernel * conv.groups
    step = _unit_step(conv, align)
    paid = -(-units // step) * step  # the lowering runs the padding kernels too
    kind = ["original"] + ["units"] * len(gains)
    amount = [torch.zeros(1, dtype=torch.long), units]
    costs = [
        torch.tensor([cost.original], dtype=torch.float64),
        cost.fixed + unit_cost * paid.double(),
    ]
    errors = [torch.zeros(1), (total - torch.cumsum(gains, 0)).clamp_min(0)]
    if cost.slot_fixed is not None and cost.per_slot is not None:
        slots = torch.arange(1, values.shape[1] + 1)
        tail = values.double().sum(0).flip(0).cumsum(0).flip(0)  # error beyond slot S-1
        kind += ["slots"] * len(slots)
        amount.append(slots)
        costs.append(cost.slot_fixed + cost.per_slot * slots.double())
        errors.append(torch.cat([tail[1:], torch.zeros(1, dtype=tail.dtype)]).clamp_min(0))
    error = torch.cat(errors).double()
    if cap is not None:
        error = error + _OVER_CAP_PENALTY * (error - cap * total).clamp_min(0)
    return _Options(kind, torch.cat(amount), torch.cat(costs).double(), error, len(gains))


def _pick(options: Mapping[str, _Options], lam: float) -> dict[str, int]:
    """Each layer's option of least error + lam * cost (ties: the cheaper one)."""
    choice = {}
    for name, opt in options.items():
        objective = opt.error + lam * opt.cost
        best = objective.min()
        tied = objective <= best + 1e-12 * max(float(best.abs()), 1e-300)
        choice[name] = int(torch.argmin(torch.where(tied, opt.cost, torch.inf)))
    return choice


def _spent(options: Mapping[str, _Options], choice: Mapping[str, int]) -> float:
    return sum(float(options[n].cost[k]) for n, k in choice.items())


def _lagrangian_choice(options: Mapping[str, _Options], budget: float) -> dict[str, int]:
    """The choices at the smallest price lam whose total cost fits the budget."""
    choice = _pick(options, 0.0)
    if _spent(options, choice) <= budget:
        return choice
    low, high = 0.0, 1.0
    while _spent(options, _pick(options, high)) > budget:
        low, high = high, high * 1e3
        if high > 1e300:  # only reachable when the cheapest options do not fit
            raise InvalidInputError("the budget is too small for any choice")
    for _ in range(200):  # bisection on log scale once low > 0
        mid = (low + high) / 2 if low == 0 else (low * high) ** 0.5
        if _spent(options, _pick(options, mid)) <= budget:
            high = mid
        else:
            low = mid
        if high - low <= 1e-12 * high:
            break
    return _pick(options, high)


def _fill_leftover(options, choice: dict[str, int], budget: float) -> dict[str, int]:
    """Spend what the price left: next kernels of G-kernel layers, by error removed per
    cost, until the next one does not fit. A layer whose next kernel would cost at least its
    original conv takes the original instead (error 0, and no dearer)."""
    choice = dict(choice)
    left = budget - _spent(options, choice)
    while True:
        best, best_ratio = None, 0.0
        for name, k in choice.items():
            opt = options[name]
            if opt.kind[k] != "units" or k >= opt.units:
                continue
            step = _next_step(opt, k)
            gain = float(opt.error[k] - opt.error[step])
            extra = float(opt.cost[step] - opt.cost[k])
            ratio = gain / extra if extra > 0 else math.inf
            if gain > 0 and ratio > best_ratio:
                best, best_ratio = name, ratio
        if best is None:
            return choice
        k = choice[best]
        step = _next_step(options[best], k)
        extra = float(options[best].cost[step] - options[best].cost[k])
        if extra > left:
            return choice
        choice[best], left = step, left - extra


def _next_step(opt: _Options, k: int) -> int:
    """The option after G-kernel option k: one more unit, or the original conv (index 0)
    when that unit would cost at least as much as the original."""
    return k + 1 if opt.cost[k + 1] < opt.cost[0] else 0


def _mark_not_run(site: ConvSite, sizes: Mapping[str, tuple[int, int]]) -> ConvSite:
    """`site`, skipped with `NOT_RUN` when the probe forward never reached it.

    Such a conv cannot be priced, and its approximation could not be checked on any input
    we have, so it stays exact (and costs nothing at this input); refusing the whole model
    would also refuse models with unused or training-only layers.
    """
    if site.name in sizes or site.skip_reason is not None:
        return site
    return replace(site, skip_reason=NOT_RUN)


def _mac_cost(conv: nn.Conv2d, pixels: int) -> LayerCost:
    """A layer's cost in MACs per image: no fixed cost, (Kh*Kw + M/groups) MACs per kernel
    per output pixel."""
    kh, kw = conv.kernel_size
    per_kernel = (kh * kw + conv.out_channels // conv.groups) * pixels
    return LayerCost(float(conv_macs_per_pixel(conv) * pixels), 0.0, float(per_kernel))


def _unit_step(conv: nn.Conv2d, align: int) -> int:
    """Units (kernels per group) bought together so that the layer's kernel count is a
    multiple of `align`: the lowering pads every group alike up to such a count."""
    return align // math.gcd(align, conv.groups)


def _aligned_counts(conv: nn.Conv2d, values: torch.Tensor, counts: torch.Tensor, align: int):
    """`counts` (of a plain conv) with the next-best kernels added (MEGO order) up to a
    multiple of `align` kernels in all, as far as there are kernels that remove error."""
    total = int(counts.sum())
    if align == 1 or conv.groups != 1 or total % align == 0:
        return counts
    return mego(values, min(-(-total // align) * align, values.numel()))


def _unit_gains(conv: nn.Conv2d, values: torch.Tensor) -> torch.Tensor:
    """Error removed by each successive unit of one layer, descending."""
    per_group = values.reshape(conv.groups, -1).sort(dim=1, descending=True).values
    return per_group.sum(dim=0)


def _unit_counts(conv: nn.Conv2d, values: torch.Tensor, units: int) -> torch.Tensor:
    """Kernels per channel when every group keeps its `units` best kernels."""
    groups = conv.groups
    per_group = values.reshape(groups, -1, values.shape[1])
    return torch.cat([mego(v, units) for v in per_group])


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_ratio(ratio: float, name: str) -> float:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not math.isfinite(ratio)
        or not 0 < ratio <= 1
    ):
        raise InvalidInputError(f"{name} must be in (0, 1], got {ratio!r}")
    return float(ratio)


def _check_layer_costs(layer_costs, candidates) -> dict[str, LayerCost]:
    names = [s.name for s in candidates]
    missing = [n for n in names if n not in layer_costs]
    if missing:
        raise InvalidInputError(
            f"layer_costs have no entry for layer {missing[0]!r}; measure them for the same "
            "layers (measure_layer_costs with the same include/exclude/skip_first)"
        )
    costs = {}
    for name in names:
        cost = layer_costs[name]
        if not isinstance(cost, LayerCost):
            raise InvalidInputError(f"layer_costs[{name!r}] must be a LayerCost, got {cost!r}")
        fields = (cost.original, cost.fixed, cost.per_kernel)
        if not all(isinstance(f, (int, float)) and math.isfinite(f) for f in fields) or (
            cost.original <= 0 or cost.fixed < 0 or cost.per_kernel <= 0
        ):
            raise InvalidInputError(
                f"layer_costs[{name!r}] needs original > 0, fixed >= 0, per_kernel > 0, "
                f"all finite; got {cost}"
            )
        slot = (cost.slot_fixed, cost.per_slot)
        if (slot[0] is None) != (slot[1] is None) or (
            slot[1] is not None
            and not (all(math.isfinite(f) for f in slot) and slot[0] >= 0 and slot[1] > 0)
        ):
            raise InvalidInputError(
                f"layer_costs[{name!r}]: slot_fixed >= 0 and per_slot > 0 go together, "
                f"both finite; got {cost}"
            )
        costs[name] = cost
    return costs


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
