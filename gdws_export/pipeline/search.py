"""The operating-point search as the export runs it: candidates built (`candidates`) and
judged on held-out images, the decision rule of `operating_point`, and `--min-speedup`'s
timing of each probe on ONNX Runtime."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.harness.measure_choice import (
    MIN_HELD_OUT,
    judge,
    selection_attack,
)
from gdws_export.pipeline.candidates import Candidate, build_candidate, candidate_measures
from gdws_export.pipeline.config import ExportConfig
from gdws_export.pipeline.model import (
    count_macs_params,
)
from gdws_export.pipeline.operating_point import (
    PairedDrop,
    Probe,
    SearchResult,
    bisect_ratio,
    choose_for_speed,
    choose_operating_point,
)
from gdws_export.pipeline.stages import ExportState, attack_batch, engine_batch, parity_inputs

PROBE_TIMING_S = 2.0  # timed seconds per graph for each --min-speedup probe


def search_operating_point(
    cfg: ExportConfig, state: ExportState, report, clock, show_bars
) -> Candidate | None:
    """The operating point (`pipeline.operating_point`): bisect the MAC ratio, each probe built
    as the export ships it and judged paired against the original on the held-out images.
    The first probe builds every candidate measure and keeps the most robust; later probes
    use that measure. Returns the candidate to ship, None for the original."""
    x, y = state.held_out
    if len(x) < MIN_HELD_OUT:
        raise InvalidInputError(
            f"the operating-point search judges candidates on held-out --calib images, and "
            f"--calib has {len(x)} after the first {cfg.calib_samples} (at least {MIN_HELD_OUT} "
            "needed): pass more images, a smaller --calib-samples, or a fixed --mac-ratio"
        )
    attack = selection_attack(cfg.alpha_eps, seed=cfg.seed)
    batch = attack_batch(state)
    with clock("search", f" (the original, {attack.describe()}, {len(x)} images)"):
        original_clean, original = judge(state.model, x, y, attack, batch)
    measures = candidate_measures(cfg, state, report)  # enough held-out images: checked above
    built: dict[tuple[float, str], Candidate] = {}
    probes: list[Probe] = []

    def evaluate(ratio: float) -> Probe:
        nonlocal measures
        trial = replace(cfg, mac_ratio=ratio)
        at_ratio = []
        for measure in measures:
            candidate = build_candidate(trial, measure, state, None, clock, show_bars)
            with clock("search", f" (MAC ratio {ratio:g}, {measure} alphas)"):
                clean, robust = judge(candidate.model, x, y, attack, batch)
            macs, _ = count_macs_params(candidate.model, state.shape)
            at_ratio.append(Probe(ratio, measure, float(clean.float().mean()),
                                  float(robust.float().mean()),
                                  PairedDrop.from_outcomes(original, robust), macs,
                                  round(candidate.seconds, 3)))  # fmt: skip
            built[(ratio, measure)] = candidate
        probes.extend(at_ratio)
        best = max(at_ratio, key=lambda p: p.robust)  # max keeps the first of equals
        measures = (best.measure,)
        if cfg.min_speedup is not None:
            with clock("search", f" (MAC ratio {ratio:g}: timing it on ONNX Runtime)"):
                best.speedup = speed.of(built[(ratio, best.measure)].model)
        return best

    if cfg.min_speedup is None:
        bisect_ratio(evaluate, lambda probe: probe.eligible(cfg.max_robust_drop))
        chosen, reason, warnings = choose_operating_point(probes, cfg.max_robust_drop)
        budget = cfg.max_robust_drop
        goal = (
            f"the smallest MAC ratio whose robust accuracy stays within {budget:g} points of "
            "the original's"
        )
    else:
        with ProbeTimer(cfg, state) as speed:
            bisect_ratio(evaluate, lambda probe: probe.speedup < cfg.min_speedup)
        chosen, reason, warnings = choose_for_speed(probes, cfg.min_speedup)
        budget = float("inf")  # no robust-accuracy budget: every probe "passes" it
        goal = (
            f"the largest MAC ratio whose graph runs at least {cfg.min_speedup:g}x the "
            f"original's speed on ONNX Runtime (batch {speed.batch}, threads "
            f"{cfg.threads or 'runtime default'})"
        )
    result = SearchResult(goal, budget, len(x), attack.describe(),
                          float(original_clean.float().mean()), float(original.float().mean()),
                          probes, chosen, reason, warnings)  # fmt: skip
    report.search = result.to_dict()
    report.warnings += warnings
    if chosen is None:
        return None
    cfg.mac_ratio = chosen.mac_ratio
    report.settings["mac_ratio"] = chosen.mac_ratio
    return built[(chosen.mac_ratio, chosen.measure)]


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
