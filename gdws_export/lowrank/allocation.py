"""Choose one option per layer (a rank, or the original layer) under a global cost budget.

Each layer l offers options k with a cost c_lk (MACs) and an error e_lk (weighted squared
error); the problem is a multiple-choice knapsack:

    minimize sum_l e_l,k(l)   subject to   sum_l c_l,k(l) <= budget.

Two solvers:

- `exact_allocation`: dynamic programming over Pareto sets (Nemhauser-Ullmann). Layer by
  layer it keeps every partial choice that no other beats in both cost and error, so the
  cheapest-least-error completion is never lost; it is exact for every input and budget, and
  fast while those sets stay small (small nets, few options). It gives up (returns None) past
  `max_pairs` candidate pairs in one merge.
- `greedy_allocation`: the rule of the GDWS allocator (`gdws_export.gdws.approximate`): each
  layer's options are cut to their lower convex hull in (cost, error), and hull steps are
  bought across all layers by error removed per MAC, largest first, until the next step does
  not fit. Where it stops it is a Lagrangian solution: no choice of at most the cost it spent
  has less error. It is exact for the budget itself when the steps it took spend the budget
  exactly, and for every budget when every layer's options lie on its hull (convex error
  curves) and all steps cost the same (MEGO's setting). Otherwise its gap is at most the error
  the step that did not fit would have removed; with `fill`, what is left of the budget then
  buys the best single-layer upgrades that fit (any Pareto option, on the hull or not).

`allocate` (solver "auto") runs the exact solver and falls back to the greedy one when the
Pareto sets grow too large.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gdws_export.errors import InvalidInputError

# Candidate (partial choice, option) pairs one exact merge may consider: about a second of
# sorting; past it (VGG-16 with every Tucker-2 rank pair) the greedy solver takes over.
MAX_PAIRS = 1_000_000
SOLVERS = ("auto", "exact", "greedy")


@dataclass(frozen=True)
class Allocation:
    """One option index per layer (into the caller's option lists), their total cost and
    error, and the solver that chose them ("exact" or "greedy")."""

    choice: tuple[int, ...]
    cost: float
    error: float
    solver: str


def allocate(
    costs: Sequence[Sequence[float]],
    errors: Sequence[Sequence[float]],
    budget: float,
    *,
    solver: str = "auto",
    max_pairs: int = MAX_PAIRS,
) -> Allocation:
    """Least total error with total cost <= budget, one option per layer.

    Args:
        costs, errors: per layer, the cost and error of each option (same lengths, finite,
            >= 0).
        budget: the total cost allowed.
        solver: "exact", "greedy", or "auto" (exact unless the Pareto sets exceed
            `max_pairs`, then greedy).
        max_pairs: the exact solver's size limit (see `exact_allocation`).

    Raises:
        InvalidInputError: bad options, or a budget below the cheapest choice of every layer.

    Example:
        >>> allocate([[4, 1], [4, 2]], [[0, 3], [0, 1]], budget=6).choice
        (0, 1)
    """
    if solver not in SOLVERS:
        raise InvalidInputError(f"solver must be one of {SOLVERS}, got {solver!r}")
    layers = _check_options(costs, errors, budget)
    if solver != "greedy":
        found = _exact(layers, budget, None if solver == "exact" else max_pairs)
        if found is not None:
            return found
    return _greedy(layers, budget, fill=True)


def exact_allocation(
    costs: Sequence[Sequence[float]],
    errors: Sequence[Sequence[float]],
    budget: float,
    *,
    max_pairs: int | None = MAX_PAIRS,
) -> Allocation | None:
    """The optimal choice, by merging Pareto sets layer by layer (module docstring).

    Returns None when one merge would consider more than `max_pairs` pairs (None: no limit).
    """
    return _exact(_check_options(costs, errors, budget), budget, max_pairs)


def greedy_allocation(
    costs: Sequence[Sequence[float]],
    errors: Sequence[Sequence[float]],
    budget: float,
    *,
    fill: bool = True,
) -> Allocation:
    """Hull steps by error removed per unit cost, then (with `fill`) the leftover budget on
    single-layer upgrades (the module docstring says when this is exact)."""
    return _greedy(_check_options(costs, errors, budget), budget, fill)


def _exact(layers: list, budget: float, max_pairs: int | None) -> Allocation | None:
    front_cost = torch.zeros(1, dtype=torch.float64)
    front_error = torch.zeros(1, dtype=torch.float64)
    history = []
    for cost, error, index in layers:
        width, count = front_cost.numel(), cost.numel()
        if max_pairs is not None and width * count > max_pairs:
            return None
        pair_cost = (front_cost[:, None] + cost[None, :]).reshape(-1)
        pair_error = (front_error[:, None] + error[None, :]).reshape(-1)
        fits = pair_cost <= budget
        parent = torch.arange(width).repeat_interleave(count)[fits]
        option = torch.arange(count).repeat(width)[fits]
        keep = pareto_front(pair_cost[fits], pair_error[fits])
        front_cost, front_error = pair_cost[fits][keep], pair_error[fits][keep]
        history.append((parent[keep], index[option[keep]]))
    position = front_cost.numel() - 1  # errors fall along the front: the last is least
    total_cost, total_error = float(front_cost[position]), float(front_error[position])
    choice = []
    for parent, option in reversed(history):
        choice.append(int(option[position]))
        position = int(parent[position])
    return Allocation(tuple(reversed(choice)), total_cost, total_error, "exact")


def _greedy(layers: list, budget: float, fill: bool) -> Allocation:
    hulls = [lower_hull(cost, error) for cost, error, _ in layers]
    at = [0] * len(layers)  # position on each hull; hull[0] is the layer's cheapest option
    spent = sum(float(cost[0]) for cost, _, _ in layers)
    steps = []
    for layer in range(len(layers)):
        _push_step(steps, layers, hulls, layer, 0)
    while steps:
        _, layer = heapq.heappop(steps)
        cost = layers[layer][0]
        extra = float(cost[hulls[layer][at[layer] + 1]] - cost[hulls[layer][at[layer]]])
        if spent + extra > budget:
            break  # the Lagrangian stop: everything so far is optimal for what it spent
        spent += extra
        at[layer] += 1
        _push_step(steps, layers, hulls, layer, at[layer])
    picked = [int(hull[k]) for hull, k in zip(hulls, at, strict=True)]
    if fill:
        picked = _fill(layers, picked, budget)
    choice = tuple(int(index[k]) for (_, _, index), k in zip(layers, picked, strict=True))
    total_cost = sum(float(c[k]) for (c, _, _), k in zip(layers, picked, strict=True))
    total_error = sum(float(e[k]) for (_, e, _), k in zip(layers, picked, strict=True))
    return Allocation(choice, total_cost, total_error, "greedy")


def pareto_front(cost: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Indices of the options no other beats in both cost and error, by increasing cost
    (so by strictly decreasing error); of equal options the first is kept."""
    by_error = torch.sort(error, stable=True).indices
    order = by_error[torch.sort(cost[by_error], stable=True).indices]
    sorted_error = error[order]
    best_before = torch.cummin(sorted_error, 0).values
    keep = torch.ones_like(sorted_error, dtype=torch.bool)
    keep[1:] = sorted_error[1:] < best_before[:-1]
    return order[keep]


def lower_hull(cost: torch.Tensor, error: torch.Tensor) -> list[int]:
    """Positions (into a Pareto front sorted by cost) of its lower convex hull: the options
    some price per unit cost makes best, cheapest first."""
    xs, ys = cost.tolist(), error.tolist()  # Python floats: this loop is scalar work
    hull: list[int] = []
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (xs[a] - xs[o]) * (y - ys[o]) - (ys[a] - ys[o]) * (x - xs[o])
            if cross > 0:
                break
            hull.pop()  # a lies on or above the chord o-k: no price prefers it
        hull.append(k)
    return hull


def _push_step(steps: list, layers, hulls, layer: int, position: int) -> None:
    """Offer layer's next hull step, keyed by minus its error removed per unit cost."""
    hull = hulls[layer]
    if position + 1 >= len(hull):
        return
    cost, error, _ = layers[layer]
    a, b = hull[position], hull[position + 1]
    rate = float(error[a] - error[b]) / float(cost[b] - cost[a])
    heapq.heappush(steps, (-rate, layer))


def _fill(layers, picked: list[int], budget: float) -> list[int]:
    """Spend what is left on the single-layer switch that removes the most error and fits,
    while there is one."""
    picked = list(picked)
    left = budget - sum(float(c[k]) for (c, _, _), k in zip(layers, picked, strict=True))
    while True:
        best, best_gain = None, 0.0
        for layer, (cost, error, _) in enumerate(layers):
            k = picked[layer]
            fits = (cost - cost[k] <= left) & (error < error[k])
            if fits.any():
                gain = float(error[k] - error[fits].min())
                if gain > best_gain:
                    best_gain = gain
                    best = (layer, int(torch.nonzero(fits & (error == error[fits].min()))[0]))
        if best is None:
            return picked
        layer, k = best
        left -= float(layers[layer][0][k] - layers[layer][0][picked[layer]])
        picked[layer] = k


def _check_options(costs, errors, budget) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer (cost, error, index) of its Pareto options, cheapest first; checks that the
    budget pays for every layer's cheapest option."""
    if len(costs) != len(errors) or not len(costs):
        raise InvalidInputError("give the options of at least one layer: costs and errors alike")
    layers = []
    for layer, (cost, error) in enumerate(zip(costs, errors, strict=True)):
        cost = torch.as_tensor(cost, dtype=torch.float64).reshape(-1)
        error = torch.as_tensor(error, dtype=torch.float64).reshape(-1)
        if cost.numel() != error.numel() or not cost.numel():
            raise InvalidInputError(f"layer {layer}: needs as many costs as errors, at least one")
        if not (torch.isfinite(cost).all() and torch.isfinite(error).all()):
            raise InvalidInputError(f"layer {layer}: costs and errors must be finite")
        if (cost < 0).any() or (error < 0).any():
            raise InvalidInputError(f"layer {layer}: costs and errors must be >= 0")
        index = pareto_front(cost, error)
        layers.append((cost[index], error[index], index))
    cheapest = sum(float(cost[0]) for cost, _, _ in layers)
    if not cheapest <= budget:
        raise InvalidInputError(
            f"the budget {budget:,.0f} is below {cheapest:,.0f}, the cost of every layer's "
            "cheapest option; raise the budget or offer cheaper options"
        )
    return layers
