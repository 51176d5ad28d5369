"""Global budgets: which kernels every layer keeps when the network must fit a MAC or time
budget (`approximate(mac_ratio=...)` or `time_ratio=...`), and the checks of their settings.

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

`max_layer_error` (see `approximate`) prices a layer's error above its cap at
`_OVER_CAP_PENALTY` per unit, so the budget takes such error only where it must.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import conv_macs_per_pixel
from gdws_export.gdws.decomposition import mego
from gdws_export.gdws.selection import ConvSite

# Error added per unit of error above the cap: larger than any error the budget could trade.
_OVER_CAP_PENALTY = 1e6


def check_budget_ratio(ratio: float, name: str, meaning: str = "") -> float:
    """`ratio` as a float, after checking it is a finite number in (0, 1].

    The one check of every budget fraction (`mac_ratio`, `time_ratio`, `max_layer_error`);
    `name` is how the caller's user spells the setting, `meaning` (optional) what the
    fraction is of, said in the message.

    Example:
        >>> check_budget_ratio(0.5, "mac_ratio")
        0.5
    """
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not math.isfinite(ratio)
        or not 0 < ratio <= 1
    ):
        said = f" ({meaning})" if meaning else ""
        raise InvalidInputError(f"{name} must be in (0, 1]{said}, got {ratio!r}")
    return float(ratio)


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


def check_layer_costs(
    layer_costs: Mapping[str, LayerCost], candidates: Sequence[ConvSite]
) -> dict[str, LayerCost]:
    """{candidate layer: its cost}, after checking every candidate has a valid `LayerCost`."""
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


def mac_cost(conv: nn.Conv2d, pixels: int) -> LayerCost:
    """A layer's cost in MACs per image: no fixed cost, (Kh*Kw + M/groups) MACs per kernel
    per output pixel."""
    kh, kw = conv.kernel_size
    per_kernel = (kh * kw + conv.out_channels // conv.groups) * pixels
    return LayerCost(float(conv_macs_per_pixel(conv) * pixels), 0.0, float(per_kernel))


def allocate_budget(
    candidates: Sequence[ConvSite],
    values: Mapping[str, torch.Tensor],
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


def _unit_step(conv: nn.Conv2d, align: int) -> int:
    """Units (kernels per group) bought together so that the layer's kernel count is a
    multiple of `align`: the lowering pads every group alike up to such a count."""
    return align // math.gcd(align, conv.groups)


def aligned_counts(
    conv: nn.Conv2d, values: torch.Tensor, counts: torch.Tensor, align: int
) -> torch.Tensor:
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
