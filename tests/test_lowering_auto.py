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
        assert timing.form == min(timing.median_ms, key=timing.median_ms.get)
        assert len(timed) + len(timing.notes) == 7  # skipped folds say why
