"""`measure_layer_costs`: real ONNX Runtime timings of every approximable conv, as the
`LayerCost`s `approximate(time_ratio=...)` allocates by; the result exports with parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _lowering_nets import VGG, randomize_batchnorm

import gdws_export.lowering.timing as timing
from gdws_export.gdws.approximate import LayerCost, approximate
from gdws_export.lowering import export_onnx, measure_layer_costs
from gdws_export.lowering.timing import TimedGraph


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_batchnorm(VGG()).eval()


def test_every_approximable_conv_gets_a_positive_cost(net):
    net.train()  # the timing runs in eval mode and gives the model back as it was
    costs = measure_layer_costs(net, (3, 16, 16), batch=2, threads=1, repeats=2)
    assert net.training
    net.eval()
    assert set(costs) == {"features.3", "features.7", "features.10"}  # the first is skipped
    for cost in costs.values():
        fields = (cost.original, cost.fixed, cost.per_kernel, cost.slot_fixed, cost.per_slot)
        assert all(math.isfinite(f) for f in fields)
        assert cost.original > 0 and cost.per_kernel > 0 and cost.per_slot > 0
        assert cost.fixed >= 0 and cost.slot_fixed >= 0


def test_time_budget_model_exports_with_parity(net, tmp_path):
    costs = measure_layer_costs(net, (3, 16, 16), batch=2, threads=1, repeats=2)
    # Halfway between a cheap choice for every layer (one kernel per channel, one slot or the
    # original conv) and all originals: reachable whatever this machine's timings are.
    cheapest = sum(
        min(c.original, c.fixed + c.per_kernel * net.get_submodule(n).in_channels,
            c.slot_fixed + c.per_slot)
        for n, c in costs.items()
    ) / sum(c.original for c in costs.values())  # fmt: skip
    ratio = (cheapest + 1) / 2
    gdws, report = approximate(net, time_ratio=ratio, layer_costs=costs, input_shape=(3, 16, 16))
    assert report.predicted_time_ratio <= ratio + 1e-9
    images = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    result = export_onnx(gdws, input_shape=(3, 16, 16), path=tmp_path / "m.onnx",
                         exporter="legacy", parity_inputs=images, lowering="auto",
                         original=net, threads=1, batch=2, repeats=2)  # fmt: skip
    assert result.parity.top1_agreement == 1.0


class _NoRunner:
    def deactivate(self):
        pass


def test_costs_are_straight_lines_through_the_two_points(net, monkeypatch):
    """With made-up timings: gather 1 ms + 0.01 ms per kernel, slots 0.5 ms + 0.2 ms per slot,
    dense 3 ms; a second point no slower than the first floors the slope at 1 %."""

    def fake_graph(module, in_shape, threads):
        return TimedGraph(_NoRunner(), {"module": module})

    def fake_timer(graphs, repeats):
        for key, graph in graphs.items():
            module = graph.feed["module"]
            if key == "dense":
                ms = 3.0
            else:  # (form, kernels per channel); the channel counts here are multiples of 8
                form, per_channel = key
                kernels = per_channel * module.in_channels
                ms = 1.0 + 0.01 * kernels if form == "gather" else 0.5 + 0.2 * per_channel
            graph.samples = [ms / 1e3] * repeats

    monkeypatch.setattr(timing, "timing_graph", fake_graph)
    monkeypatch.setattr(timing, "time_interleaved", fake_timer)
    costs = measure_layer_costs(net, (3, 16, 16))
    for cost in costs.values():
        assert cost.original == pytest.approx(3.0)
        assert cost.fixed == pytest.approx(1.0) and cost.per_kernel == pytest.approx(0.01)
        assert cost.slot_fixed == pytest.approx(0.5) and cost.per_slot == pytest.approx(0.2)
    assert timing._line({8: 2.0, 32: 1.0}) == pytest.approx((2.0 - 0.01 * 2.0, 0.01 * 2.0 / 8))
    assert isinstance(next(iter(costs.values())), LayerCost)
    with pytest.raises(ValueError, match="two counts"):
        measure_layer_costs(net, (3, 16, 16), kernels_per_channel=(4, 1))
