"""The operating-point search as the export runs it: candidates built (`candidates`) and
judged on held-out images, the decision rule of `operating_point`, and `--min-speedup`'s
timing of each probe on ONNX Runtime."""

from __future__ import annotations

import copy
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from gdws_export.errors import BudgetOutOfReachError, InvalidInputError
from gdws_export.harness.accuracy import predict_torch
from gdws_export.harness.measure_choice import (
    MIN_HELD_OUT,
    judge,
    judge_with_images,
    selection_attack,
)
from gdws_export.lowering.lower import put_back_originals
from gdws_export.methods import get_method
from gdws_export.pipeline.candidates import Candidate, build_candidate, candidate_measures
from gdws_export.pipeline.config import ExportConfig
from gdws_export.pipeline.model import (
    count_macs_params,
)
from gdws_export.pipeline.operating_point import (
    EXACT_PROBES,
    MAX_EXACT_LAYERS,
    RATIO_RANGE,
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
from gdws_export.pipeline.stages import ExportState, attack_batch, engine_batch, parity_inputs

PROBE_TIMING_S = 2.0  # timed seconds per graph for each --min-speedup probe


def search_operating_point(
    cfg: ExportConfig, state: ExportState, report, clock, show_bars
) -> Candidate | None:
    """The operating point (`pipeline.operating_point`): bisect the MAC ratio, each probe built
    as the export ships it and judged paired against the original on the held-out images;
    then search which layers to keep exact. The first probe builds every candidate measure
    and keeps the most robust; later probes use that measure. Returns the candidate to ship,
    None for the original; `cfg` (mac_ratio, exclude) then describes it."""
    x, _ = state.held_out
    if len(x) < MIN_HELD_OUT:
        raise InvalidInputError(
            f"the operating-point search judges candidates on held-out --calib images, and "
            f"--calib has {len(x)} after the first {cfg.calib_samples} (at least {MIN_HELD_OUT} "
            "needed): pass more images, a smaller --calib-samples, or a fixed --mac-ratio"
        )
    prober = _Prober(cfg, state, report, clock, show_bars)
    ranking, exact_note = [], ""
    if cfg.min_speedup is None:
        budget = cfg.max_robust_drop
        bisect_ratio(prober.evaluate, lambda probe: probe.eligible(budget))
        if get_method(cfg.method).layers_independent:
            ranking, exact_note = _keep_layers_exact(prober, budget)
        else:
            exact_note = (
                f"--method {cfg.method} changes layers together (a conv's filters and the "
                "inputs of the conv reading them): no layer can be kept exact alone"
            )
        chosen, reason, warnings = choose_operating_point(prober.probes, budget)
        goal = (
            f"the fewest MACs (MAC ratio and layers kept exact) whose robust accuracy stays "
            f"within {budget:g} points of the original's"
        )
    else:
        with ProbeTimer(cfg, state) as prober.timer:
            bisect_ratio(prober.evaluate, lambda probe: probe.speedup < cfg.min_speedup)
        chosen, reason, warnings = choose_for_speed(prober.probes, cfg.min_speedup)
        budget = float("inf")  # no robust-accuracy budget: every probe "passes" it
        goal = (
            f"the largest MAC ratio whose graph runs at least {cfg.min_speedup:g}x the "
            f"original's speed on ONNX Runtime (batch {prober.timer.batch}, threads "
            f"{cfg.threads or 'runtime default'})"
        )
    result = SearchResult(goal, budget, len(x), prober.attack.describe(), *prober.original,
                          prober.probes, chosen, reason, warnings,
                          original_macs=report.macs["original"], exact_ranking=ranking,
                          exact_note=exact_note)  # fmt: skip
    report.search = result.to_dict()
    report.warnings += warnings
    if chosen is None:
        return None
    cfg.mac_ratio = chosen.mac_ratio
    cfg.exclude = (*cfg.exclude, *chosen.exact)
    report.settings.update(mac_ratio=chosen.mac_ratio, exclude=list(cfg.exclude))
    return prober.built[_key(chosen)]


def _key(probe: Probe) -> tuple:
    return (probe.mac_ratio, probe.measure, probe.exact)


class _Prober:
    """Builds and judges probes, keeping every candidate built (by MAC ratio, measure and
    layers kept exact) and every probe, in order."""

    def __init__(self, cfg: ExportConfig, state: ExportState, report, clock, show_bars) -> None:
        self.cfg, self.state, self.report, self.clock = cfg, state, report, clock
        self.show_bars = show_bars
        self.attack = selection_attack(cfg.alpha_eps, seed=cfg.seed)
        self.batch = attack_batch(state)
        x, y = state.held_out
        with clock("search", f" (the original, {self.attack.describe()}, {len(x)} images)"):
            clean, self.outcomes = judge(state.model, x, y, self.attack, self.batch)
        self.original = (float(clean.float().mean()), float(self.outcomes.float().mean()))
        self.measures = candidate_measures(cfg, state, report)  # enough images: checked
        self.built: dict[tuple, Candidate] = {}
        self.probes: list[Probe] = []
        self.timer: ProbeTimer | None = None  # --min-speedup: times the best of each ratio

    def evaluate(self, ratio: float, exact: tuple[str, ...] = ()) -> Probe:
        """Build the candidates at `ratio` (with `exact` layers kept), judge them; the most
        robust one is this ratio's probe, and its measure the only one built from then on."""
        known = [p for p in self.probes if (p.mac_ratio, p.exact) == (ratio, exact)]
        if known:  # a ratio out of the method's reach was moved to one already judged
            return max(known, key=lambda p: p.robust)
        trial = replace(self.cfg, mac_ratio=ratio, exclude=(*self.cfg.exclude, *exact))
        x, y = self.state.held_out
        at_ratio = []
        kept = f", {', '.join(exact)} exact" if exact else ""
        for measure in self.measures:
            try:
                candidate = build_candidate(trial, measure, self.state, None, self.clock,
                                            self.show_bars)  # fmt: skip
            except BudgetOutOfReachError as exc:  # probe the smallest ratio it can meet
                if exc.reachable is None or exc.reachable >= 1:
                    raise
                return self.evaluate(math.ceil(exc.reachable * 1e4) / 1e4, exact)
            with self.clock("search", f" (MAC ratio {ratio:g}, {measure} alphas{kept})"):
                clean, robust = judge(candidate.model, x, y, self.attack, self.batch)
            macs, _ = count_macs_params(candidate.model, self.state.shape)
            probe = Probe(ratio, measure, float(clean.float().mean()),
                          float(robust.float().mean()),
                          PairedDrop.from_outcomes(self.outcomes, robust), macs,
                          round(candidate.seconds, 3), exact=exact)  # fmt: skip
            at_ratio.append(probe)
            self.built[_key(probe)] = candidate
        self.probes.extend(at_ratio)
        best = max(at_ratio, key=lambda p: p.robust)  # max keeps the first of equals
        self.measures = (best.measure,)
        if self.timer is not None:
            with self.clock("search", f" (MAC ratio {ratio:g}: timing it on ONNX Runtime)"):
                best.speedup = self.timer.of(self.built[_key(best)].model)
        return best


def _keep_layers_exact(prober: _Prober, budget: float) -> tuple[list[ExactLayer], str]:
    """Which layers to keep exact (`operating_point`'s docstring): rank the GDWS layers of
    the refuted probe nearest the boundary, then bisect again with the best-ranked kept exact
    while that finds cheaper passing probes. Returns the ranking and a note saying what was
    tried."""
    chosen, _, _ = choose_operating_point(prober.probes, budget)
    ceiling = chosen.macs if chosen is not None else prober.report.macs["original"]
    top = chosen.mac_ratio if chosen is not None else RATIO_RANGE[1]
    refuted = [p for p in prober.probes if not p.eligible(budget) and p.mac_ratio < top]
    if not refuted:
        return [], "every probe below the shipped one passed: no layer needs keeping exact"
    boundary = max(refuted, key=lambda p: (p.mac_ratio, p.robust))
    base = prober.built[_key(boundary)]
    ranking = _rank_layers(prober, base, ceiling - boundary.macs)
    if not ranking:
        return [], (
            f"no GDWS layer of the probe at MAC ratio {boundary.mac_ratio:g} (over the budget) "
            f"removed logit error under attack on the calibration images when put back alone "
            f"({_layers(len(base.approximation.replaced))}): none kept exact"
        )
    exact: tuple[str, ...] = ()
    for layer in ranking[:MAX_EXACT_LAYERS]:
        exact = (*exact, layer.name)
        found = bisect_ratio(lambda ratio: prober.evaluate(ratio, exact),  # noqa: B023
                             lambda probe: probe.eligible(budget),
                             ratio_range=(RATIO_RANGE[0], top), probes=EXACT_PROBES)  # fmt: skip
        cheaper = [p for p in found if p.eligible(budget) and p.macs < ceiling]
        if not cheaper:
            break
        best = min(cheaper, key=lambda p: p.macs)
        ceiling, top = best.macs, best.mac_ratio
    return ranking, (
        f"the layers of the probe at MAC ratio {boundary.mac_ratio:g} (over the budget), each "
        "put back alone, ranked by the logit error under attack it removes on the calibration "
        "images per MAC; the best-ranked kept exact in turn, the MAC ratio bisected again"
    )


def _layers(count: int) -> str:
    return f"{count} layer" + ("" if count == 1 else "s")


def _rank_layers(prober: _Prober, base: Candidate, room: int) -> list[ExactLayer]:
    """`base`'s replaced layers by the error under attack their original buys back per MAC,
    each put back alone; layers costing `room` MACs or more are not tried (they could not
    beat the probe already shipping).

    The error is the distance of the logits from the original's on the calibration images and
    the original's PGD images of them (`logit_error`): continuous, so it ranks layers where
    robust accuracy on a few hundred images ties at a handful of images, and each put-back
    costs a forward pass, not an attack. The images are the calibration (fit) ones, never the
    held-out judge's."""
    x, y = prober.state.data
    with prober.clock("rank_exact", f" (PGD on the original, {len(x)} calibration images)"):
        _, _, x_adv = judge_with_images(prober.state.model, x, y, prober.attack, prober.batch)
    inputs = torch.cat([x, x_adv])  # clean and under attack
    reference = predict_torch(prober.state.model, inputs, prober.batch)
    before = logit_error(reference, predict_torch(base.model, inputs, prober.batch))
    layers = []
    with prober.clock("rank_exact", f" ({len(base.approximation.replaced)} layers put back)"):
        for layer in base.approximation.replaced:
            macs = layer.macs_before - layer.macs_after
            if macs >= room:
                continue
            model = copy.deepcopy(base.model)
            put_back_originals(model, prober.state.model, [layer.name])
            after = logit_error(reference, predict_torch(model, inputs, prober.batch))
            share = (before - after) / before if before > 0 else 0.0
            layers.append(ExactLayer(layer.name, round(100.0 * share, 3), macs))
    return rank_exact_layers(layers)


class ProbeTimer:
    """`--min-speedup`: each probe's speed-up on ONNX Runtime, measured as it would ship: its
    graph exported with the export's lowering, timed interleaved against the original graph
    (exported once) at `--batch` and `--threads`, medians."""

    def __init__(self, cfg: ExportConfig, state: ExportState) -> None:
        self.cfg, self.state = cfg, state
        self.batch = engine_batch(cfg, state)

    def __enter__(self) -> ProbeTimer:
        self._folder = tempfile.TemporaryDirectory(prefix="gdws-probe-")
        self.folder = Path(self._folder.name)
        self.original = self._export(self.state.model, "original", "gather", None)
        return self

    def __exit__(self, *exc) -> None:
        self._folder.cleanup()

    def _export(self, model, name: str, lowering: str, original) -> Path:
        from gdws_export.lowering import export_onnx

        path = self.folder / f"{name}.onnx"
        export_onnx(model, input_shape=self.state.shape, path=path, lowering=lowering,
                    exporter=self.cfg.exporter, opset=self.cfg.opset, original=original,
                    parity_inputs=parity_inputs(self.state, self.cfg.seed),
                    threads=self.cfg.threads, batch=self.batch)  # fmt: skip
        return path

    def of(self, model: nn.Module) -> float:
        from gdws_export.harness.speed import benchmark
        from gdws_export.runtimes.onnxruntime import OrtRunner

        probe = self._export(model, "probe", self.cfg.lowering, self.state.model)
        runners = {name: OrtRunner(os.fspath(path), threads=self.cfg.threads)
                   for name, path in (("original", self.original), ("probe", probe))}  # fmt: skip
        timed = benchmark(runners, batch_sizes=(self.batch,), duration_s=PROBE_TIMING_S,
                          reference="original")  # fmt: skip
        return round(float(timed.speedup("probe", self.batch)), 3)
