"""`auto`: every candidate timed, fold costs include the producer, the fastest kept."""

from __future__ import annotations

import pytest
import torch
from _lowering_nets import VGG, gdwsify, randomize_batchnorm

import gdws_export.lowering.auto as auto
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.lower import gdws_layers, lower_model
from gdws_export.lowering.timing import TimedGraph

CANDIDATES = ("dense", "gather", "slots", "fold")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return gdwsify(randomize_batchnorm(VGG()), 0.1)


class _NoRunner:
    def deactivate(self):
        pass


def _fake_timer(ms: dict[str, float]):
    def fake(graphs, repeats):
        for key, graph in graphs.items():
            graph.samples = [ms[key] / 1e3] * repeats

    return fake


def _no_graph(module, in_shape, threads):
    return TimedGraph(_NoRunner(), {})


@pytest.mark.parametrize(
    "ms,expected",
    [
        # fold: 3 here + 4 for the widened producer - 1 for the plain one = 6 > gather's 5
        ({"dense": 10, "gather": 5, "slots": 7, "fold": 3, "fold:producer": 4, "producer": 1},
         "gather"),
        ({"dense": 10, "gather": 5, "slots": 7, "fold": 3, "fold:producer": 2, "producer": 1},
         "fold"),
        ({"dense": 4, "gather": 5, "slots": 7, "fold": 3, "fold:producer": 4, "producer": 1},
         "dense"),
        ({"dense": 5, "gather": 5, "slots": 7, "fold": 9, "fold:producer": 4, "producer": 1},
         "dense"),  # a tie keeps the original conv
    ],
)  # fmt: skip
def test_choice_is_fastest_with_fold_including_producer(model, monkeypatch, ms, expected):
    monkeypatch.setattr(auto, "time_interleaved", _fake_timer(ms))
    monkeypatch.setattr(auto, "timing_graph", _no_graph)
    sites, _ = find_fold_sites(model)
    choices = auto.choose_forms(
        model, torch.rand(1, 3, 16, 16), sites=sites, candidates=CANDIDATES, repeats=3
    )
    assert set(choices) == set(gdws_layers(model))
    for timing in choices.values():
        assert timing.form == expected
        assert timing.median_ms["fold"] == pytest.approx(ms["fold"] + ms["fold:producer"] - 1)
        assert timing.median_ms["dense"] == pytest.approx(ms["dense"])
    forms = {n: t.form for n, t in choices.items()}
    lowered = lower_model(model, forms, sites=sites, align=8)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-4, atol=1e-5)


def test_real_timings_cover_every_candidate(model):
    sites, _ = find_fold_sites(model)
    choices = auto.choose_forms(
        model, torch.rand(1, 3, 16, 16), sites=sites, batch=2, threads=1, repeats=2,
        candidates=("dense", "gather", "uniform", "slots", "fold", "fold-2", "fold-3"),
    )  # fmt: skip
    for timing in choices.values():
        timed = set(timing.median_ms)
        assert {"dense", "gather", "uniform", "slots", "fold"} <= timed
        assert all(v > 0 for k, v in timing.median_ms.items() if not k.startswith("fold"))
        assert timing.form == auto.fastest_form(timing.fastest_ms)  # the margin rule
        assert len(timed) + len(timing.notes) == 7  # skipped folds say why


def test_choice_goes_by_the_fastest_round(model, monkeypatch):
    # Load only adds time: a burst over two of gather's three rounds (median 9 ms) must not
    # hide that it ran 5 ms, faster than the original conv's steady 7 ms.
    rounds = {"dense": [7, 7, 7], "gather": [9, 5, 9]}

    def fake(graphs, repeats):
        for key, graph in graphs.items():
            graph.samples = [ms / 1e3 for ms in rounds[key]]

    monkeypatch.setattr(auto, "time_interleaved", fake)
    monkeypatch.setattr(auto, "timing_graph", _no_graph)
    sites, _ = find_fold_sites(model)
    choices = auto.choose_forms(
        model, torch.rand(1, 3, 16, 16), sites=sites, candidates=("dense", "gather"), repeats=3
    )
    for timing in choices.values():
        assert timing.form == "gather"
        assert timing.median_ms == pytest.approx({"dense": 7.0, "gather": 9.0})
        assert timing.fastest_ms == pytest.approx({"dense": 7.0, "gather": 5.0})


def test_network_check_goes_by_the_fastest_round(model, monkeypatch):
    import gdws_export.lowering.pipeline as pipeline

    # [median, p90, fastest]: the per-layer plan's median is hit by a burst, its best round
    # is the fastest of the three plans.
    times = {"auto": (5.0, 5.5, 2.5), "gather": (3.5, 3.6, 3.0), "dense": (6.0, 6.1, 5.9)}
    monkeypatch.setattr(
        pipeline, "time_networks", lambda models, *a, **k: {m: times[m] for m in models}
    )
    forms = {name: "slots" for name in gdws_layers(model)}
    sites, _ = find_fold_sites(model)
    network = pipeline._check_network(
        model, forms, torch.rand(1, 3, 16, 16), sites=sites, originals={}, align=8,
        batch=1, threads=1, repeats=3,
    )  # fmt: skip
    assert network.plan == "auto" and network.forms == forms
    assert network.ms["gather"] == [3.5, 3.6, 3.0]
    assert set(network.confirmation_ms) == {"auto", "dense"}  # timed again, alone
    assert "2.36x" in network.speed_check and "GDWS ships" in network.speed_check


@pytest.mark.parametrize(
    "ms,expected",
    [
        ({"dense": 10.0, "gather": 9.6}, "dense"),  # 4 % faster: within the margin
        ({"dense": 10.0, "gather": 9.4}, "gather"),  # 6 % faster: beyond it
        ({"dense": 10.0, "gather": 9.0, "slots": 9.6}, "gather"),
        ({"gather": 9.6, "slots": 9.7}, "gather"),  # no original to beat
    ],
)
def test_a_gdws_form_must_beat_the_original_by_the_margin(ms, expected):
    assert auto.SPEED_MARGIN == 0.05
    assert auto.fastest_form(ms) == expected


def _network_rounds(monkeypatch, rounds):
    """Fake whole-model timings: the n-th call of time_networks gets rounds[n]."""
    import gdws_export.lowering.pipeline as pipeline

    calls = iter(rounds)

    def fake(models, *args, **kwargs):
        times = next(calls)  # StopIteration: a round the test did not expect
        return {key: times[key] for key in models}

    monkeypatch.setattr(pipeline, "time_networks", fake)
    return pipeline


def test_a_gdws_graph_that_is_not_faster_when_confirmed_ships_the_original(model, monkeypatch):
    """The first round's winner can be a lucky draw (shipped GDWS engines measured 0.67x to
    0.92x afterwards): timed again against the original graph, it must still be faster by
    the margin, or the original graph ships and the check says so."""
    first = {"auto": (5.0, 5.1, 4.0), "gather": (6.0, 6.1, 5.5), "dense": (6.0, 6.1, 6.0)}
    confirmation = {"auto": (5.9, 6.0, 5.8), "dense": (6.0, 6.1, 6.0)}  # 1.03x: not enough
    pipeline = _network_rounds(monkeypatch, [first, confirmation])
    forms = {name: "slots" for name in gdws_layers(model)}
    sites, _ = find_fold_sites(model)
    network = pipeline._check_network(
        model, forms, torch.rand(1, 3, 16, 16), sites=sites, originals={}, align=8,
        batch=1, threads=1, repeats=3,
    )  # fmt: skip
    assert network.plan == "dense" and set(network.forms.values()) == {"dense"}
    assert network.confirmation_ms["auto"] == [5.9, 6.0, 5.8]
    assert network.speed_check == (
        "the assembled GDWS graph (auto plan) ran 1.03x the original graph's speed in a "
        "confirmation round, not faster by the 5% margin, so the original ships"
    )


def test_no_confirmation_round_when_the_original_graph_wins_the_first(model, monkeypatch):
    first = {"auto": (5.0, 5.1, 5.8), "gather": (6.0, 6.1, 6.5), "dense": (6.0, 6.1, 6.0)}
    pipeline = _network_rounds(monkeypatch, [first])  # a second call would raise
    forms = {name: "slots" for name in gdws_layers(model)}
    network = pipeline._check_network(
        model, forms, torch.rand(1, 3, 16, 16), sites={}, originals={}, align=8,
        batch=1, threads=1, repeats=3,
    )  # fmt: skip
    assert network.plan == "dense" and network.confirmation_ms == {}
    assert network.speed_check.endswith(
        "(the fastest, the auto plan, 1.03x), so the original ships"
    )
