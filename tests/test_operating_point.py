"""The operating-point search: the paired drop and its interval, the decision rule on made-up
candidates, the bisection, the settings, and a small search end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gdws_export.cli import main
from gdws_export.errors import InvalidInputError
from gdws_export.pipeline import ExportConfig, run_export
from gdws_export.pipeline.operating_point import (
    ExactLayer,
    PairedDrop,
    Probe,
    SearchResult,
    bisect_ratio,
    choose_for_speed,
    choose_operating_point,
    logit_error,
    rank_exact_layers,
)
from tests import _model_files as files


def _probe(ratio: float, lost: int, gained: int = 0, images: int = 1000, measure="none",
           macs: int = 1000, exact: tuple[str, ...] = ()):  # fmt: skip
    drop = PairedDrop(images, lost, gained)
    return Probe(ratio, measure, 0.9, 0.7, drop, macs, 1.0, exact=exact)


# --- the paired drop -------------------------------------------------------------------------


def test_paired_drop_counts_lost_and_gained_images():
    original = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    candidate = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    drop = PairedDrop.from_outcomes(original, candidate)
    assert (drop.images, drop.lost, drop.gained) == (6, 2, 1)
    assert drop.points == pytest.approx(100 / 6)
    low, high = drop.interval()
    assert low < drop.points < high


def test_identical_outcomes_still_have_an_interval():
    """No disagreement on 50 images does not prove a zero drop: the interval keeps a width."""
    low, high = PairedDrop(50, 0, 0).interval()
    assert low < 0 < high and high > 1.0


def test_interval_narrows_with_more_images():
    small, large = PairedDrop(250, 10, 5).interval(), PairedDrop(2500, 100, 50).interval()
    assert large[1] - large[0] < (small[1] - small[0]) / 2.5


def test_interval_covers_the_true_drop_about_95_percent_of_the_time():
    """Monte Carlo: paired outcomes with a known drop (3 % lost, 2 % gained: 1 point)."""
    rng = np.random.default_rng(0)
    true_drop, covered, trials, n = 1.0, 0, 2000, 400
    for _ in range(trials):
        draws = rng.multinomial(n, [0.03, 0.02, 0.95])
        low, high = PairedDrop(n, int(draws[0]), int(draws[1])).interval()
        covered += low <= true_drop <= high
    assert 0.93 <= covered / trials <= 0.98


def test_images_to_resolve_scale_with_the_interval():
    drop = PairedDrop(256, 4, 4)  # a zero drop whose interval is about +-1.5 points
    needed = drop.images_to_resolve(0.5)
    assert needed is not None and needed > 256
    # At that many images and the same rates, the upper end is within the budget.
    scaled = PairedDrop(needed, round(4 * needed / 256), round(4 * needed / 256))
    assert scaled.interval()[1] <= 0.55
    assert PairedDrop(256, 10, 0).images_to_resolve(0.5) is None  # measured 3.9: never


# --- the decision rule on fixed, made-up candidates ------------------------------------------


def test_ships_the_fastest_passing_candidate():
    probes = [_probe(0.5, 0), _probe(0.3, 1), _probe(0.2, 60)]
    chosen, reason, warnings = choose_operating_point(probes, 0.5)
    assert chosen is probes[1]  # 0.2 passes nothing; 0.3 is the smallest that passes
    assert "0.300" in reason and warnings == []
    assert probes[1].verdict(0.5) == "passes" and probes[2].verdict(0.5) == "fails"


def test_refuses_a_candidate_whose_interval_says_it_fails():
    failing = _probe(0.1, 30, images=1000)  # 3 points, interval well above 0.5
    assert failing.verdict(0.5) == "fails" and not failing.eligible(0.5)
    chosen, _, _ = choose_operating_point([failing, _probe(0.4, 0)], 0.5)
    assert chosen.mac_ratio == 0.4


def test_reports_too_few_images():
    unresolved = _probe(0.25, 3, 2, images=256)  # +0.4 points, interval about +-1.7
    assert unresolved.verdict(0.5) == "unresolved"
    chosen, _, warnings = choose_operating_point([unresolved], 0.5)
    assert chosen is unresolved
    assert len(warnings) == 1 and "256 held-out images cannot resolve" in warnings[0]
    assert re_number(warnings[0], r"about (\d+) images would") > 256


def test_nothing_within_the_budget_ships_the_original():
    chosen, reason, _ = choose_operating_point([_probe(0.3, 9, images=256)], 0.5)
    assert chosen is None and "the original ships" in reason


def test_a_probe_with_layers_kept_exact_ships_when_it_costs_fewer_macs():
    """Probes are priced by their MACs: a deeper cut with one layer kept exact beats a
    shallower cut that passes, and loses to it when it costs more."""
    shallow = _probe(0.6, 0, macs=600)
    deeper = _probe(0.3, 1, macs=450, exact=("features.3",))
    chosen, reason, _ = choose_operating_point([shallow, deeper], 0.5)
    assert chosen is deeper and "features.3 kept exact" in reason
    costly = _probe(0.3, 1, macs=700, exact=("features.3",))
    assert choose_operating_point([shallow, costly], 0.5)[0] is shallow


def test_layers_are_ranked_by_error_removed_per_mac():
    layers = [ExactLayer("big", 2.0, 1000), ExactLayer("small", 1.0, 100),
              ExactLayer("useless", 0.0, 10), ExactLayer("harmful", -1.0, 10)]  # fmt: skip
    assert [layer.name for layer in rank_exact_layers(layers)] == ["small", "big"]


def test_logit_error_is_scale_free_and_zero_when_equal():
    reference = torch.tensor([[2.0, -2.0], [1.0, 3.0]])
    assert logit_error(reference, reference) == 0.0
    off = reference + torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    assert logit_error(reference, off) == pytest.approx(0.5 / 4.5)
    assert logit_error(10 * reference, 10 * off) == pytest.approx(logit_error(reference, off))


class _FakeProber:
    """A network whose layer "b" refutes every cut below ratio 0.6; kept exact, any ratio
    down to 0.15 passes. MACs: 1000 x ratio, plus 100 per layer kept exact."""

    def __init__(self):
        from types import SimpleNamespace

        self.probes, self.built, self.calls = [], {}, []
        self.report = SimpleNamespace(macs={"original": 1000})

    def evaluate(self, ratio, exact=()):
        self.calls.append((ratio, exact))
        passes = ratio >= 0.6 or ("b" in exact and ratio >= 0.15)
        probe = _probe(ratio, 0 if passes else 60, macs=int(1000 * ratio) + 100 * len(exact),
                       exact=exact)  # fmt: skip
        self.probes.append(probe)
        self.built[(ratio, "none", exact)] = object()
        return probe


def test_the_search_keeps_the_ranked_layer_exact_and_cuts_deeper(monkeypatch):
    import gdws_export.pipeline.search as search

    prober = _FakeProber()
    ranked = []

    def rank(prober_, base, room):
        ranked.append(room)
        return [ExactLayer("b", 3.0, 50), ExactLayer("a", 0.5, 50)]

    monkeypatch.setattr(search, "_rank_layers", rank)
    bisect_ratio(prober.evaluate, lambda probe: probe.eligible(0.5))
    before, _, _ = choose_operating_point(prober.probes, 0.5)
    ranking, note = search._keep_layers_exact(prober, 0.5)
    chosen, _, _ = choose_operating_point(prober.probes, 0.5)
    assert [layer.name for layer in ranking] == ["b", "a"] and len(ranked) == 1
    assert before.exact == () and before.mac_ratio >= 0.6
    assert chosen.exact == ("b",) and chosen.macs < before.macs
    assert 0.15 <= chosen.mac_ratio < 0.6
    # "b" found cheaper probes, so "a" was tried too; it found nothing cheaper: the walk ends
    tried = {exact for _, exact in prober.calls}
    assert tried == {(), ("b",), ("b", "a")}


def test_the_search_takes_nothing_apart_when_every_probe_passes(monkeypatch):
    import gdws_export.pipeline.search as search

    prober = _FakeProber()
    prober.evaluate(0.7)
    monkeypatch.setattr(search, "_rank_layers", lambda *a: pytest.fail("nothing to rank"))
    ranking, note = search._keep_layers_exact(prober, 0.5)
    assert ranking == [] and "no layer needs keeping exact" in note


def re_number(text: str, pattern: str) -> int:
    import re

    return int(re.search(pattern, text).group(1))


# --- the bisection ---------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", [0.13, 0.22, 0.4, 0.75])
def test_bisection_finds_the_boundary_within_its_resolution(boundary):
    """A model that loses 5 points below `boundary` and nothing above it."""
    seen = []

    def evaluate(ratio):
        seen.append(ratio)
        return _probe(ratio, 50 if ratio < boundary else 0)

    probes = bisect_ratio(evaluate, lambda probe: probe.eligible(0.5))
    chosen, _, _ = choose_operating_point(probes, 0.5)
    assert len(seen) == 4
    assert boundary <= chosen.mac_ratio <= boundary * 10 ** (1 / 16) * 1.001
    assert math.isclose(seen[0], 10**-0.5, rel_tol=1e-3)  # the first probe: the middle


# --- settings --------------------------------------------------------------------------------


def test_the_search_is_the_default_with_calibration_data_and_no_budget(tmp_path):
    model = str(files.checkpoint(tmp_path))
    searching = ExportConfig(model, calib="x.npz").resolved()
    assert searching.max_robust_drop == 0.5 and searching.mac_ratio is None
    assert (searching.calib_samples, searching.held_out_samples) == (256, 256)
    assert ExportConfig(model, calib="x.npz", mac_ratio=0.3).resolved().max_robust_drop is None
    assert ExportConfig(model).resolved().mac_ratio == 0.75  # no data: nothing to judge by
    none = ExportConfig(model, calib="x.npz", sensitivity="none").resolved()
    assert none.calib_samples == 256  # the search holds out images whatever the measure


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_robust_drop": -1.0, "calib": "x.npz"}, r"in \[0, 100\)"),
        ({"max_robust_drop": float("nan"), "calib": "x.npz"}, r"in \[0, 100\)"),
        ({"max_robust_drop": 0.5, "calib": "x.npz", "mac_ratio": 0.3}, "give one or the other"),
        ({"max_robust_drop": 0.5}, "pass --calib DATA"),
        ({"max_robust_drop": 0.5, "calib": "x.npz", "gdws": False}, "--no-gdws"),
    ],
)
def test_bad_search_settings_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        ExportConfig(str(files.checkpoint(tmp_path)), **kwargs).resolved()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-robust-drop", "-0.5"], "--max-robust-drop must be"),
        (["--max-robust-drop", "nan"], "--max-robust-drop must be"),
        (["--max-robust-drop", "0.5", "--mac-ratio", "0.3"], "give one or the other"),
    ],
)
def test_cli_refuses_bad_search_settings(capsys, tmp_path, argv, message):
    model = files.checkpoint(tmp_path)
    calib = files.calib_npz(tmp_path, n=16)
    out = tmp_path / "out"
    assert main([str(model), "--calib", str(calib), *argv, "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()


def test_too_little_calibration_data_to_search_is_an_error(capsys, tmp_path):
    model = files.checkpoint(tmp_path)
    calib = files.calib_npz(tmp_path, n=40)  # 32 fit, 8 would judge
    out = tmp_path / "out"
    argv = [str(model), "--calib", str(calib), "--calib-samples", "32", "-o", str(out)]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert "at least 64 needed" in line and "\n" not in line
    assert not out.exists()


# --- end to end ------------------------------------------------------------------------------


def test_small_search_end_to_end(tmp_path):
    """A trained LeNet: the search probes four ratios, ships the smallest eligible one and
    records every probe, paired against the original on the held-out images."""
    from tests._trained import fashion_slice, trained_lenet

    model, _, _ = trained_lenet()
    path = tmp_path / "lenet.pt"
    from gdws_export.models import save_checkpoint

    save_checkpoint(model, path)
    x, y = fashion_slice()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x[:160].numpy(), y=y[:160].numpy())  # 96 fit, 64 judge
    config = ExportConfig(str(path), output=str(tmp_path / "out"), calib=str(calib),
                          calib_samples=96, held_out_samples=64, sensitivity="none",
                          max_robust_drop=2.0, exporter="legacy", lowering="gather",
                          threads=1)  # fmt: skip
    report = run_export(config)
    search = report.search
    bisection = [p for p in search["probes"] if not p["exact"]]
    assert search["held_out"] == 64 and len(bisection) == 4
    assert math.isclose(bisection[0]["mac_ratio"], 10**-0.5, rel_tol=1e-3)
    ranked = [layer["name"] for layer in search["exact_ranking"]]
    assert all(set(p["exact"]) <= set(ranked) for p in search["probes"])
    eligible = [p for p in search["probes"] if p["verdict"] != "fails" and p["drop_points"] <= 2]
    if eligible:
        shipped = search["probes"][search["chosen"]]
        assert shipped["macs"] == min(p["macs"] for p in eligible)
        assert report.settings["mac_ratio"] == shipped["mac_ratio"]
        assert report.settings["exclude"] == shipped["exact"]
        assert report.settings["sensitivity"] == shipped["measure"]
        # The settings rebuild what shipped: a fixed budget, the same measure and images.
        settings = {**report.settings, "max_robust_drop": None, "notes": [],
                    "output": str(tmp_path / "again")}  # fmt: skip
        again = run_export(ExportConfig.from_dict(settings))
        assert again.approximation["layers"] == report.approximation["layers"]
        _same_graph(tmp_path / "out" / "gdws.onnx", tmp_path / "again" / "gdws.onnx", x[:16])
        assert report.approximation is not None
    else:
        assert search["chosen"] is None and report.approximation is None
    assert "## Operating point" in report.to_markdown()
    assert (tmp_path / "out" / "search.png").read_bytes().startswith(b"\x89PNG")
    # What ships, measured on the engines: the same held-out images, attacked in PyTorch and
    # replayed on original.onnx and on the shipped engine.
    accuracy = {m["name"]: m for m in report.held_out_accuracy["models"]}
    assert set(accuracy) == {"original", "shipped"}
    for model in accuracy.values():
        assert model["samples"] == 64 and model["engine_clean_accuracy"] is not None
        (attack,) = model["attacks"]
        assert attack["engine_accuracy"] is not None and attack["steps"] == 10
    original = accuracy["original"]["attacks"][0]["robust_accuracy"]
    assert original == pytest.approx(search["original"]["robust"])  # the same paired attack
    if search["chosen"] is not None:  # gather ships every GDWS layer: the probe's model
        shipped = accuracy["shipped"]["attacks"][0]["robust_accuracy"]
        assert shipped == pytest.approx(search["probes"][search["chosen"]]["robust"])
    assert "## Accuracy on the held-out images" in report.to_markdown()


# --- the other way round: --min-speedup -------------------------------------------------------


def _same_graph(first, second, x) -> None:
    from gdws_export.runtimes import OrtRunner

    outputs = []
    for path in (first, second):
        with OrtRunner(str(path), threads=1) as runner:
            outputs.append(runner.predict(x.numpy()))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_min_speedup_ships_the_most_robust_fast_enough_candidate():
    probes = [_probe(0.5, 0), _probe(0.3, 3), _probe(0.2, 9)]
    for probe, speedup in zip(probes, (1.4, 2.1, 2.6), strict=True):
        probe.speedup = speedup
    chosen, reason, _ = choose_for_speed(probes, 2.0)
    assert chosen is probes[1] and "2.10x" in reason  # 0.3 is the largest ratio at >= 2x
    chosen, reason, _ = choose_for_speed(probes, 3.0)
    assert chosen is None and "the fastest 2.60x" in reason


def test_min_speedup_bisection_goes_deeper_until_fast_enough():
    """Speed-up 1/ratio: 2x is reached at ratio 0.5 and below."""

    def evaluate(ratio):
        probe = _probe(ratio, 0)
        probe.speedup = 1 / ratio
        return probe

    probes = bisect_ratio(evaluate, lambda probe: probe.speedup < 2.0)
    chosen, _, _ = choose_for_speed(probes, 2.0)
    assert 0.5 / 10 ** (1 / 16) / 1.001 <= chosen.mac_ratio <= 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_speedup": 1.0, "calib": "x.npz"}, "must be a number > 1"),
        ({"min_speedup": float("inf"), "calib": "x.npz"}, "must be a number > 1"),
        ({"min_speedup": 2.0, "calib": "x.npz", "mac_ratio": 0.3}, "--mac-ratio sets it"),
        ({"min_speedup": 2.0, "calib": "x.npz", "max_robust_drop": 0.5}, "give one"),
        ({"min_speedup": 2.0}, "pass --calib DATA"),
        ({"min_speedup": 2.0, "calib": "x.npz", "target": "torch"}, "use --target ort"),
    ],
)
def test_bad_min_speedup_settings(tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        ExportConfig(str(files.checkpoint(tmp_path)), **kwargs).resolved()


def test_min_speedup_search_end_to_end(tmp_path, monkeypatch):
    """Each probe is exported and timed against the original graph; the report gives the
    speed-ups (not asserted: speed is a benchmark's business) and the probe it shipped."""
    import gdws_export.pipeline.search as search

    monkeypatch.setattr(search, "PROBE_TIMING_S", 0.05)
    model = files.checkpoint(tmp_path)
    calib = files.calib_npz(tmp_path, n=80)  # 16 fit, 64 judge
    config = ExportConfig(str(model), output=str(tmp_path / "out"), calib=str(calib),
                          calib_samples=16, held_out_samples=64, sensitivity="none",
                          min_speedup=1.01, exporter="legacy", lowering="gather", threads=1,
                          dry_run=True)  # fmt: skip
    report = run_export(config)
    probes = report.search["probes"]
    assert len(probes) == 4 and all(p["speedup"] > 0 for p in probes)
    assert "runs at least 1.01x" in report.search["goal"]
    fast = [p for p in probes if p["speedup"] >= 1.01]
    if fast:
        assert probes[report.search["chosen"]]["mac_ratio"] == max(p["mac_ratio"] for p in fast)
    assert "| speed-up |" in report.to_markdown()


def test_frontier_plot_is_a_png(tmp_path):
    from gdws_export.harness.plots import plot_operating_point

    probes = [_probe(0.316, 0), _probe(0.178, 4)]
    chosen, reason, warnings = choose_operating_point(probes, 0.5)
    search = SearchResult("goal", 0.5, 1000, "PGD-10", 0.9, 0.7, probes, chosen, reason,
                          warnings).to_dict()  # fmt: skip
    path = plot_operating_point(search, tmp_path / "search.png")
    assert path.read_bytes().startswith(b"\x89PNG")
