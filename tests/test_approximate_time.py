"""`approximate(time_ratio=...)`: a budget priced by per-layer costs (measured time).

The allocation is checked against brute force on small layers, against the MAC budget when
the costs are MACs, and for the choices a time price should make: uniform kernel counts when
slots are cheap, the original conv where no GDWS form pays for itself.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from gdws_export.gdws import budget as budget_module
from gdws_export.gdws import config as config_module
from gdws_export.gdws.approximate import ApproximationReport, LayerCost, approximate
from gdws_export.gdws.decomposition import channel_svd, error_values


class TinyNet(nn.Module):
    """Three small convs: few enough options per layer to enumerate every combination."""

    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))).mean(dim=(2, 3))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


# Per layer: original, fixed + per_kernel * G (any counts), slot_fixed + per_slot * S (uniform).
COSTS = {
    "a": LayerCost(10.0, 2.0, 0.9, 1.0, 2.0),
    "b": LayerCost(8.0, 1.0, 0.7, 3.0, 1.5),
    "c": LayerCost(5.0, 0.5, 0.5),
}


def _layer_options(
    conv: nn.Conv2d, cost: LayerCost, align: int = 1
) -> list[tuple[float, float, list[int]]]:
    """Every (cost, error, counts) a layer can take, written out independently of the
    implementation: the original conv, the best G kernels for each G (paid as G rounded up to
    a multiple of `align`, as the lowering pads them), S kernels per channel."""
    values = error_values(channel_svd(conv.weight, conv.groups)).double()
    channels, rank = values.shape
    options = [(cost.original, 0.0, [])]
    flat = sorted(((float(v), c) for c, row in enumerate(values) for v in row), reverse=True)
    for g in range(1, channels * rank + 1):
        counts = [0] * channels
        for _, c in flat[:g]:
            counts[c] += 1
        error = float(values.sum()) - sum(v for v, _ in flat[:g])
        paid = math.ceil(g / align) * align
        options.append((cost.fixed + cost.per_kernel * paid, error, counts))
    if cost.per_slot is not None:
        for s in range(1, rank + 1):
            error = float(values[:, s:].sum())
            options.append((cost.slot_fixed + cost.per_slot * s, error, [s] * channels))
    return options


def _brute_force(model, costs, budget, align: int = 1) -> float:
    per_layer = [_layer_options(model.get_submodule(n), costs[n], align) for n in costs]
    best = math.inf
    for combo in itertools.product(*per_layer):
        if sum(o[0] for o in combo) <= budget + 1e-9:
            best = min(best, sum(o[1] for o in combo))
    return best


def _totals(report: ApproximationReport) -> tuple[float, float]:
    layers = [lay for lay in report.layers if lay.status != "skipped"]
    return sum(lay.cost_after for lay in layers), sum(lay.weighted_error for lay in layers)


@pytest.mark.parametrize("ratio", [0.3, 0.45, 0.6, 0.8])
def test_budget_is_met_and_no_worse_than_the_price_alone(tiny, ratio):
    _, report = approximate(tiny, time_ratio=ratio, layer_costs=COSTS, skip_first=False,
                            max_layer_error=1.0)  # fmt: skip
    spent, error = _totals(report)
    budget = ratio * sum(c.original for c in COSTS.values())
    assert spent <= budget + 1e-9
    assert report.predicted_time_ratio == pytest.approx(spent / (budget / ratio))
    # Brute force can do better only by what one discrete step of the price leaves unspent:
    # at the cost the allocation spends, nothing is better.
    assert error <= _brute_force(tiny, COSTS, spent) + 1e-6


def test_price_choice_is_optimal_for_its_own_cost(tiny):
    """A Lagrangian minimiser is the exact optimum at the cost it spends: checked for many
    prices against every combination of options."""
    sites = {n: tiny.get_submodule(n) for n in COSTS}
    values = {n: error_values(channel_svd(conv.weight, conv.groups)) for n, conv in sites.items()}
    options = {n: budget_module._options(sites[n], values[n], COSTS[n]) for n in COSTS}
    for lam in [0.0, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 1e3]:
        choice = budget_module._pick(options, lam)
        spent = budget_module._spent(options, choice)
        error = sum(float(options[n].error[k]) for n, k in choice.items())
        assert error == pytest.approx(_brute_force(tiny, COSTS, spent), abs=1e-6)


@pytest.mark.parametrize("align", [2, 4])
@pytest.mark.parametrize("ratio", [0.55, 0.7, 0.85])
def test_aligned_budget_is_optimal_with_padding_priced(tiny, ratio, align):
    """With `align`, G kernels cost what the lowering runs (G padded to a multiple of
    `align`): the budget holds in those costs, nothing at that cost has less error, and every
    layer fills its last block (or keeps all its kernels)."""
    costs = {n: LayerCost(c.original, c.fixed, c.per_kernel) for n, c in COSTS.items()}
    _, report = approximate(tiny, time_ratio=ratio, layer_costs=costs, skip_first=False,
                            max_layer_error=1.0, align=align)  # fmt: skip
    spent, error = _totals(report)
    assert spent <= ratio * sum(c.original for c in costs.values()) + 1e-9
    assert error <= _brute_force(tiny, costs, spent, align) + 1e-6
    assert report.replaced
    for layer in report.replaced:
        assert layer.kernels % align == 0 or layer.kernels == layer.full_rank_kernels, layer


def test_mac_costs_give_the_mac_budget(tiny):
    """Priced in MACs, the time budget is the MAC budget: same kernels everywhere."""
    pixels = 8 * 8
    costs = {
        n: LayerCost(
            float(conv.in_channels * conv.out_channels * 9 * pixels), 0.0,
            float((9 + conv.out_channels) * pixels),
        )
        for n, conv in ((n, tiny.get_submodule(n)) for n in "abc")
    }  # fmt: skip
    for ratio in (0.4, 0.6, 0.9):
        _, by_time = approximate(tiny, time_ratio=ratio, layer_costs=costs, skip_first=False,
                                 max_layer_error=1.0)  # fmt: skip
        _, by_macs = approximate(tiny, mac_ratio=ratio, skip_first=False)
        assert [(lay.status, lay.kernels_per_channel) for lay in by_time.layers] == [
            (lay.status, lay.kernels_per_channel) for lay in by_macs.layers
        ]


def test_cheap_slots_give_uniform_counts(tiny):
    costs = {n: LayerCost(c.original, c.fixed, c.per_kernel * 5, 0.0, 0.5) for n, c in
             COSTS.items()}  # fmt: skip
    costs["c"] = COSTS["c"]
    _, report = approximate(tiny, time_ratio=0.3, layer_costs=costs, skip_first=False)
    for layer in report.layers:
        if layer.name in ("a", "b"):
            assert layer.status == "gdws"
            assert len(set(layer.kernels_per_channel)) == 1, layer.kernels_per_channel
            slots = layer.kernels_per_channel[0]
            assert layer.cost_after == pytest.approx(0.5 * slots)


def test_layer_whose_gdws_form_costs_more_keeps_its_conv(tiny):
    costs = dict(COSTS)
    costs["b"] = LayerCost(1.0, 1.0, 0.5)  # one kernel already costs more than the conv
    new, report = approximate(tiny, time_ratio=0.6, layer_costs=costs, skip_first=False)
    b = next(layer for layer in report.layers if layer.name == "b")
    assert b.status == "original" and b.cost_after == b.cost_before == 1.0
    assert isinstance(new.b, nn.Conv2d)


def test_budget_of_one_fits_when_every_conv_is_cheaper_than_its_gdws_form(tiny):
    """Costs that float32 cannot hold exactly (as measured ones are): keeping every original
    conv costs exactly the budget at time_ratio 1 and must not be refused by rounding."""
    costs = {n: LayerCost(0.017662364067897823 + 1e-4 * i, 0.0195840672768999, 4.9e-05)
             for i, n in enumerate(COSTS)}  # fmt: skip
    new, report = approximate(tiny, time_ratio=1.0, layer_costs=costs, skip_first=False)
    assert all(layer.status == "original" for layer in report.layers)
    assert all(isinstance(getattr(new, n), nn.Conv2d) for n in COSTS)


def test_report_round_trips_and_shows_costs(tiny):
    _, report = approximate(tiny, time_ratio=0.5, layer_costs=COSTS, skip_first=False)
    assert ApproximationReport.from_dict(report.to_dict()).to_dict() == report.to_dict()
    assert report.time_ratio == 0.5
    assert "cost before" in report.table()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"time_ratio": 0.5}, "go together"),
     ({"mac_ratio": 0.5, "layer_costs": COSTS}, "go together"),
     ({"time_ratio": 0.5, "mac_ratio": 0.5, "layer_costs": COSTS}, "exactly one"),
     ({"time_ratio": 0.0, "layer_costs": COSTS}, "time_ratio"),
     ({"time_ratio": 0.5, "layer_costs": {"a": COSTS["a"]}}, "no entry for layer 'b'"),
     ({"time_ratio": 0.5, "layer_costs": {**COSTS, "b": (1, 2, 3)}}, "must be a LayerCost"),
     ({"time_ratio": 0.5, "layer_costs": {**COSTS, "b": LayerCost(1.0, 0.0, 0.0)}}, "per_kernel > 0"),
     ({"time_ratio": 0.5, "layer_costs": {**COSTS, "b": LayerCost(math.nan, 0.0, 1.0)}}, "finite"),
     ({"time_ratio": 0.5, "layer_costs": {**COSTS, "b": LayerCost(1.0, 0.0, 1.0, 0.0, -1.0)}}, "per_slot"),
     ({"time_ratio": 0.01, "layer_costs": COSTS}, "too small")],
)  # fmt: skip
def test_bad_time_budget_input(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        approximate(tiny, skip_first=False, **kwargs)


def test_leftover_never_buys_a_kernel_dearer_than_the_original_conv():
    """Filling the leftover budget: where the next kernel would make a layer cost as much as
    its conv, the conv itself is taken (error 0, no dearer); elsewhere the next kernel."""
    options = {
        # original 10; 1..3 units cost 6, 9, 12 with errors 5, 2, 0
        "a": budget_module._Options(
            ["original", "units", "units", "units"], torch.tensor([0, 1, 2, 3]),
            torch.tensor([10.0, 6.0, 9.0, 12.0], dtype=torch.float64),
            torch.tensor([0.0, 5.0, 2.0, 0.0], dtype=torch.float64), 3,
        ),
        # original 100; 1..2 units cost 1, 2 with errors 4, 1
        "b": budget_module._Options(
            ["original", "units", "units"], torch.tensor([0, 1, 2]),
            torch.tensor([100.0, 1.0, 2.0], dtype=torch.float64),
            torch.tensor([0.0, 4.0, 1.0], dtype=torch.float64), 2,
        ),
    }  # fmt: skip
    # Start at a=2 units (cost 9), b=1 unit (cost 1); 3 left: b's next unit (ratio 3) then
    # a's conv (cost 1 more, error 2 -> 0) rather than a third unit costing 12 > 10.
    filled = budget_module._fill_leftover(options, {"a": 2, "b": 1}, budget=13.0)
    assert filled == {"a": 0, "b": 2}
    assert budget_module._spent(options, filled) == 12.0


# max_layer_error: a cap on each layer's share of dropped error.


def _layer_totals(model) -> dict[str, float]:
    """Each layer's error with every kernel dropped: what the cap is a fraction of."""
    return {n: float(error_values(channel_svd(model.get_submodule(n).weight, 1)).sum())
            for n in COSTS}  # fmt: skip


def _shares(report: ApproximationReport, totals: dict[str, float]) -> dict[str, float]:
    return {lay.name: lay.weighted_error / totals[lay.name] for lay in report.layers}


def _brute_force_capped(model, costs, budget, cap, totals) -> float:
    per_layer = [
        [o for o in _layer_options(model.get_submodule(n), costs[n]) if o[1] <= cap * totals[n]]
        for n in costs
    ]
    best = math.inf
    for combo in itertools.product(*per_layer):
        if sum(o[0] for o in combo) <= budget + 1e-9:
            best = min(best, sum(o[1] for o in combo))
    return best


@pytest.mark.parametrize(
    "ratio, cap", [(0.5, 0.6), (0.6, 0.35), (0.6, 0.6), (0.7, 0.2), (0.8, 0.2), (0.8, 0.35)]
)
def test_cap_holds_where_the_budget_allows_and_is_optimal_under_it(tiny, ratio, cap):
    totals = _layer_totals(tiny)
    budget = ratio * sum(c.original for c in COSTS.values())
    assert _brute_force_capped(tiny, COSTS, budget, cap, totals) < math.inf  # a capped choice fits
    _, report = approximate(tiny, time_ratio=ratio, layer_costs=COSTS, skip_first=False,
                            max_layer_error=cap)  # fmt: skip
    spent, error = _totals(report)
    assert spent <= budget + 1e-9
    assert all(share <= cap + 1e-9 for share in _shares(report, totals).values())
    # Among capped choices, nothing is better at the cost it spends.
    assert error <= _brute_force_capped(tiny, COSTS, spent, cap, totals) + 1e-6
    assert report.max_layer_error == cap


@pytest.mark.parametrize("ratio, cap", [(0.5, 0.5), (0.55, 0.35), (0.7, 0.2)])
def test_cap_spreads_error_that_the_plain_budget_concentrates(tiny, ratio, cap):
    totals = _layer_totals(tiny)
    kwargs = {"time_ratio": ratio, "layer_costs": COSTS, "skip_first": False}
    _, plain = approximate(tiny, max_layer_error=1.0, **kwargs)
    _, capped = approximate(tiny, max_layer_error=cap, **kwargs)
    # The sum lets one layer take the error; the cap moves it to the others.
    assert max(_shares(plain, totals).values()) > cap
    assert max(_shares(capped, totals).values()) <= cap + 1e-9


def test_cap_gives_way_when_no_capped_choice_fits(tiny):
    """Soft: a budget below every capped choice is still met, with the cap exceeded."""
    totals = _layer_totals(tiny)
    ratio = 0.3
    budget = ratio * sum(c.original for c in COSTS.values())
    assert _brute_force_capped(tiny, COSTS, budget, 0.05, totals) == math.inf
    _, report = approximate(tiny, time_ratio=ratio, layer_costs=COSTS, skip_first=False,
                            max_layer_error=0.05)  # fmt: skip
    assert _totals(report)[0] <= budget + 1e-9
    assert max(_shares(report, totals).values()) > 0.05


def test_cap_defaults(tiny):
    """Time budgets are capped at TIME_MAX_LAYER_ERROR unless told otherwise; MAC budgets
    are not capped, and a cap of 1 changes nothing."""
    _, timed = approximate(tiny, time_ratio=0.5, layer_costs=COSTS, skip_first=False)
    assert timed.max_layer_error == config_module.TIME_MAX_LAYER_ERROR == 0.35
    _, by_macs = approximate(tiny, mac_ratio=0.5, skip_first=False)
    _, capped_at_one = approximate(tiny, mac_ratio=0.5, skip_first=False, max_layer_error=1.0)
    assert by_macs.max_layer_error is None
    assert [lay.kernels_per_channel for lay in by_macs.layers] == [
        lay.kernels_per_channel for lay in capped_at_one.layers
    ]
    assert ApproximationReport.from_dict(timed.to_dict()).max_layer_error == 0.35


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mac_ratio": 0.5, "max_layer_error": 0.0}, "max_layer_error"),
     ({"mac_ratio": 0.5, "max_layer_error": 1.5}, "max_layer_error"),
     ({"mac_ratio": 0.5, "max_layer_error": math.nan}, "max_layer_error"),
     ({"beta": 0.1, "max_layer_error": 0.3}, "not beta")],
)  # fmt: skip
def test_bad_cap(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        approximate(tiny, skip_first=False, **kwargs)
