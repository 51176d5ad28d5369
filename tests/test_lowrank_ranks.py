"""Rank allocation under a MAC budget: optimality against brute force, and the network level."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from _lowering_nets import randomize_batchnorm
from _lowrank import (
    images,
    onnx_roundtrip,
    relative_gap,
    single_thread,  # noqa: F401 (an autouse fixture: importing it applies it)
)
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.activations import relative_gains
from gdws_export.lowrank import (
    KroneckerLinear,
    LowRankConv2d,
    LowRankReport,
    Tucker2Conv2d,
    allocate,
    approximate_lowrank,
    exact_allocation,
    greedy_allocation,
    kronecker_shape,
)


def _brute(costs, errors, budget) -> float:
    return min(
        sum(errors[layer][k] for layer, k in enumerate(choice))
        for choice in itertools.product(*(range(len(c)) for c in costs))
        if sum(costs[layer][k] for layer, k in enumerate(choice)) <= budget
    )


def _random_case(rng: random.Random, convex: bool = False, unit: bool = False):
    layers = rng.randint(1, 4)
    costs, errors = [], []
    for _ in range(layers):
        count = rng.randint(1, 5)
        if convex:  # error removed per unit cost falling from step to step
            rates = sorted((rng.random() for _ in range(count - 1)), reverse=True)
            steps = [1 if unit else rng.randint(1, 6) for _ in rates]
            cost, error = [rng.randint(0, 5)], [sum(rates) * 6 + rng.random()]
            for rate, step in zip(rates, steps, strict=True):
                cost.append(cost[-1] + step)
                error.append(error[-1] - rate * step)
        else:
            cost = [rng.randint(0, 20) for _ in range(count)]
            error = [rng.random() for _ in range(count)]
        costs.append(cost)
        errors.append(error)
    low = sum(min(c) for c in costs)
    return costs, errors, rng.randint(low, sum(max(c) for c in costs))


def test_exact_allocation_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        costs, errors, budget = _random_case(rng)
        found = exact_allocation(costs, errors, budget)
        assert found.error == pytest.approx(_brute(costs, errors, budget), abs=1e-12)
        assert found.cost <= budget and found.solver == "exact"
        assert found.cost == sum(costs[i][k] for i, k in enumerate(found.choice))
        assert found.error == pytest.approx(sum(errors[i][k] for i, k in enumerate(found.choice)))


def test_greedy_is_exact_on_convex_curves_with_equal_steps():
    rng = random.Random(1)
    for _ in range(300):
        costs, errors, budget = _random_case(rng, convex=True, unit=True)
        found = greedy_allocation(costs, errors, budget, fill=False)
        assert found.error == pytest.approx(_brute(costs, errors, budget), abs=1e-12)


def test_greedy_stops_at_a_choice_optimal_for_what_it_spent():
    rng = random.Random(2)
    gaps = 0
    for _ in range(300):
        costs, errors, budget = _random_case(rng, convex=rng.random() < 0.5)
        stopped = greedy_allocation(costs, errors, budget, fill=False)
        assert stopped.cost <= budget
        assert stopped.error == pytest.approx(_brute(costs, errors, stopped.cost), abs=1e-12)
        filled = greedy_allocation(costs, errors, budget)
        assert filled.cost <= budget and filled.error <= stopped.error + 1e-12
        gaps += filled.error > _brute(costs, errors, budget) + 1e-12
    assert gaps < 30  # not exact in general, but rarely off


def test_auto_falls_back_to_greedy_past_the_size_limit():
    costs = [list(range(10))] * 4
    errors = [[1 / (k + 1) for k in range(10)]] * 4
    assert allocate(costs, errors, 20).solver == "exact"
    assert allocate(costs, errors, 20, max_pairs=50).solver == "greedy"
    assert allocate(costs, errors, 20, solver="greedy").cost <= 20


def test_bad_budgets_and_options_are_refused():
    with pytest.raises(InvalidInputError, match="cheapest option"):
        allocate([[5, 3]], [[0, 1]], 2)
    with pytest.raises(InvalidInputError, match="as many costs"):
        allocate([[5, 3]], [[0]], 10)
    with pytest.raises(InvalidInputError, match="solver"):
        allocate([[1]], [[0]], 1, solver="fast")


class TinyNet(nn.Module):
    """conv stack (first, plain, strided grouped, reflect-padded) and a Linear head on the
    flattened activation."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 32, 3, stride=2, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(32, 32, (3, 5), padding=(1, 2), padding_mode="reflect"), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(32, 16, 1),
        )  # fmt: skip
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(TinyNet())


@pytest.mark.parametrize("method", ["tucker2", "lowrank", "both"])
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.9])
def test_budget_is_met_and_the_report_adds_up(net, method, ratio):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    small, report = approximate_lowrank(net, mac_ratio=ratio, method=method,
                                        input_shape=(1, 28, 28))  # fmt: skip
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert report.achieved_mac_ratio <= ratio and report.solver == "exact"
    assert report.replaced or ratio == 0.9
    statuses = {layer.name: layer.status for layer in report.layers}
    assert statuses["features.0"] == "skipped" and statuses["features.11"] == "skipped"
    for layer in report.replaced:
        module = small.get_submodule(layer.name)
        assert isinstance(module, Tucker2Conv2d if layer.status == "tucker2" else LowRankConv2d)
        assert layer.macs_after == module.macs(layer.in_pixels, layer.out_pixels)
        assert layer.params_after == sum(p.numel() for p in module.parameters())
        assert 0 <= layer.relative_error <= 1
        assert layer.weighted_error == pytest.approx(module.weighted_error)
    x = images(4)
    assert small(x).shape == (4, 10) and not small.training


def test_exact_allocation_beats_or_ties_greedy_at_the_network_level(net):
    common = dict(mac_ratio=0.4, method="both", input_shape=(1, 28, 28))
    _, exact = approximate_lowrank(net, **common, solver="exact")
    _, greedy = approximate_lowrank(net, **common, solver="greedy")
    total = [sum(layer.weighted_error for layer in r.layers) for r in (exact, greedy)]
    assert total[0] <= total[1] + 1e-9 and greedy.achieved_mac_ratio <= 0.4


def test_full_budget_keeps_every_conv_exact(net):
    small, report = approximate_lowrank(net, mac_ratio=1.0, input_shape=(1, 28, 28))
    assert all(layer.weighted_error < 1e-9 for layer in report.layers)
    x = images(4)
    assert torch.allclose(small(x), net(x), atol=1e-4)


def test_convs_inside_low_rank_layers_are_not_factored_again(net):
    small, _ = approximate_lowrank(net, mac_ratio=0.3, input_shape=(1, 28, 28))
    _, again = approximate_lowrank(small, mac_ratio=0.5, input_shape=(1, 28, 28))
    inner = [layer for layer in again.layers if layer.reason == "part of a low-rank layer"]
    assert inner and all(layer.status == "skipped" for layer in inner)


def test_alphas_weight_the_layers(net):
    gains = relative_gains(net)
    _, per_channel = approximate_lowrank(net, mac_ratio=0.4, alphas=gains, input_shape=(1, 28, 28))
    scalars = {name: float(g[0]) for name, g in gains.items()}
    _, per_layer = approximate_lowrank(net, mac_ratio=0.4, alphas=scalars, input_shape=(1, 28, 28))
    assert per_channel.weighted and [lay.ranks for lay in per_channel.layers] == [
        lay.ranks for lay in per_layer.layers
    ]
    for layer in per_layer.replaced:  # relative alphas: weighted error = relative error
        assert layer.weighted_error == pytest.approx(layer.relative_error, rel=1e-6)
    with pytest.raises(InvalidInputError, match="no entry"):
        approximate_lowrank(net, mac_ratio=0.4, alphas={"features.3": 1.0}, input_shape=(1, 28, 28))


def test_report_round_trips_through_json(net):
    _, report = approximate_lowrank(net, mac_ratio=0.5, method="both", input_shape=(1, 28, 28))
    again = LowRankReport.from_dict(json.loads(report.to_json()))
    assert again == report and "ratio" in again.table()


def test_bad_settings_are_refused(net):
    with pytest.raises(InvalidInputError, match="input shape"):
        approximate_lowrank(net, mac_ratio=0.5)
    with pytest.raises(InvalidInputError, match="mac_ratio"):
        approximate_lowrank(net, mac_ratio=1.5, input_shape=(1, 28, 28))
    with pytest.raises(InvalidInputError, match="method"):
        approximate_lowrank(net, mac_ratio=0.5, method="cp", input_shape=(1, 28, 28))
    with pytest.raises(InvalidInputError, match="cheapest option"):
        approximate_lowrank(net, mac_ratio=0.001, input_shape=(1, 28, 28))


def test_a_compressed_model_matches_onnx_runtime(net):
    small, _ = approximate_lowrank(net, mac_ratio=0.4, method="both", input_shape=(1, 28, 28))
    shape = kronecker_shape(10, 16 * 7 * 7, activation=(16, 7, 7))
    small.head = KroneckerLinear.from_linear(net.head, 4, shape)
    small.eval()
    x = images(16)
    got, ops = onnx_roundtrip(small, x)
    assert relative_gap(got, small(x).detach()) <= 1e-4
    assert {"Conv", "MatMul"} <= ops
