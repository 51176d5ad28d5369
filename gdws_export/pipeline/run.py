"""`run_export`: model file -> (alphas) -> GDWS model -> ONNX graphs -> engine -> reports.

Everything is written into a temporary directory beside the output directory
(`.<name>.partial-<pid>-XXXX`) and renamed into place at the very end, so an interrupted or failed
run leaves no directory that looks complete; the Triton model directory likewise. Nothing here
prints or exits: progress goes to a callback, errors are `GDWSExportError`s.
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.activations import activation_gains, input_moments, relative_gains
from gdws_export.gdws.approximate import NOT_RUN, ApproximationReport, approximate
from gdws_export.gdws.calibration import calibrated_gains
from gdws_export.gdws.refit import RefitReport, refit_pointwise
from gdws_export.gdws.selection import count_params
from gdws_export.gdws.sensitivity import (
    load_alphas,
    load_input_moments,
    noise_gains,
    save_alphas,
)
from gdws_export.harness.measure_choice import (
    AUTO_MEASURES,
    MIN_HELD_OUT,
    SELECTION_STEPS,
    choose_measure,
    judge,
    selection_attack,
)
from gdws_export.limits import (
    check_memory,
    check_model_memory,
    estimate_arch_memory,
    estimate_model_memory,
    input_bytes,
)
from gdws_export.loading import LoadedModel
from gdws_export.lowering.lower import put_back_originals
from gdws_export.pipeline.config import DEFAULT_ALPHA_EPS, ExportConfig
from gdws_export.pipeline.engine import EngineCheck, check_engine, relocate_build
from gdws_export.pipeline.model import (
    check_forward,
    count_macs_params,
    load_configured_model,
    match_alpha_names,
    match_layer_patterns,
    no_replacement_reason,
    prepare_model,
)
from gdws_export.pipeline.operating_point import (
    PairedDrop,
    Probe,
    SearchResult,
    bisect_ratio,
    choose_for_speed,
    choose_operating_point,
)
from gdws_export.pipeline.outputs import Staging, check_destination
from gdws_export.pipeline.report import ExportReport

# stage -> what the progress line says while it runs
STAGES = {
    "load": "loading the model",
    "data": "reading calibration data",
    "alphas": "computing alphas",
    "layer_costs": "timing every replaceable conv",
    "approximate": "replacing convs by GDWS convs",
    "refit": "refitting the 1x1 convs on the calibration data",
    "choose": "choosing the sensitivity on held-out calibration images",
    "search": "judging a candidate on held-out calibration images",
    "held_out": "measuring the original and the shipped engine on held-out images",
    "export_original": "exporting the original ONNX graph",
    "export_gdws": "exporting the GDWS ONNX graph",
    "export_program": "saving what ships as a torch.export program",
    "build": "building the engine",
    "check_engine": "checking the engine against its source",
}
PARITY_INPUTS = 16
PROBE_TIMING_S = 2.0  # timed seconds per graph for each --min-speedup probe

# progress(stage, label, seconds): seconds is None when the stage starts, its duration after.
ProgressCallback = Callable[[str, str, float | None], None]


def run_export(
    config: ExportConfig,
    *,
    progress: ProgressCallback | None = None,
    show_bars: bool = False,
) -> ExportReport:
    """Run one export as `config` says; returns its report (also saved as report.json/md).

    Args:
        config: the settings (validated and completed with `config.resolved()`).
        progress: called when each stage starts and ends (see `ProgressCallback`).
        show_bars: let long loops (alphas) draw tqdm progress bars on stderr.

    Returns:
        The ExportReport; `report.output_dir` and `report.files` say where everything is.

    Raises:
        InvalidInputError: bad settings or files (exit code 2).
        UnsupportedModelError: the model cannot be approximated or exported (3).
        ParityError: an exported graph or engine does not match (4).
        MissingDependencyError: TensorRT or another optional package is missing (5).

    Example:
        >>> report = run_export(ExportConfig("models/lenet.pt", target="ort"))  # doctest: +SKIP
        >>> report.path("engine")                                             # doctest: +SKIP
    """
    cfg = config.resolved()
    torch.manual_seed(cfg.seed)
    clock = _Clock(progress)
    if cfg.dry_run:
        return _plan(cfg, clock, show_bars)[0]
    output = Path(cfg.output)
    triton_dir = Path(cfg.triton_repo) / cfg.triton_name if cfg.triton_repo else None
    # --force never replaces a folder holding what this run reads or its other output.
    inputs = [p for p in (cfg.model, cfg.alphas, cfg.calib, cfg.timing_cache, cfg.triton_repo)
              if p is not None and os.path.lexists(p)]  # fmt: skip
    destinations = {
        "output": dict(force=cfg.force, what="output directory", option="-o/--output",
                       protected=[*inputs, *([triton_dir] if triton_dir else [])]),
        "triton": dict(force=cfg.force, what="Triton model directory", option="--triton-name",
                       protected=[*inputs, output]),
    }  # fmt: skip
    check_destination(output, **destinations["output"])
    if triton_dir is not None:
        check_destination(triton_dir, **destinations["triton"])
    if cfg.target == "trt":
        from gdws_export.runtimes.tensorrt import import_tensorrt

        import_tensorrt()  # before any work: says what to install
    with (
        Staging(output, **destinations["output"]) as staged,
        Staging.optional(triton_dir, **destinations["triton"]) as triton,
    ):
        report, state = _plan(cfg, clock, show_bars)
        report.warnings += staged.notes + (triton.notes if triton is not None else [])
        _export_and_build(cfg, report, state, staged.path, clock)
        if state.held_out is not None and len(state.held_out[0]):
            _held_out_accuracy(cfg, report, state, staged.path, clock)
        if triton is not None:
            report.triton = state.engine.write_triton(triton.path, cfg.triton_name)
            report.triton["model_dir"] = os.fspath(triton_dir)
        report.output_dir = os.fspath(output)
        if report.search is not None:
            from gdws_export.harness.plots import plot_operating_point

            plot_operating_point(report.search, staged.path / "search.png")
            report.files["search_plot"] = "search.png"
        report.files["report_json"] = "report.json"
        report.files["report_md"] = "report.md"
        report.timings = dict(clock.timings)
        (staged.path / "report.json").write_text(report.to_json() + "\n")
        (staged.path / "report.md").write_text(report.to_markdown())
        for staging in (staged, triton):  # both may be committed before either is
            if staging is not None:
                staging.check()
        staged.commit()
        if triton is not None:
            triton.commit()
    return report


@dataclass
class _Alphas:
    """One measure's alphas: values (None: unweighted), input moments (activation-aware
    only), whether they were computed here (then saved as alphas.pt), and their source."""

    measure: str
    alphas: dict[str, torch.Tensor] | None
    moments: dict[str, torch.Tensor] | None
    computed: bool
    source: str


@dataclass
class _Candidate:
    """The GDWS model built with one measure's alphas (refit when asked)."""

    alphas: _Alphas
    model: nn.Module
    approximation: ApproximationReport
    refit: RefitReport | None
    seconds: float


class _State:
    """What the stages hand to each other (models, data, alphas)."""

    def __init__(self, loaded: LoadedModel, model: nn.Module, shape: tuple[int, int, int]):
        self.loaded, self.model, self.shape = loaded, model, shape
        self.gdws_model: nn.Module | None = None
        # what ships: gdws_model with the convs gdws.onnx keeps put back (set on export)
        self.shipped_model: nn.Module | None = None
        self.data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.held_out: tuple[torch.Tensor, torch.Tensor] | None = None  # sensitivity "auto"
        self.alphas: _Alphas | None = None
        self.alphas_by_measure: dict[str, _Alphas] = {}  # computed once, whatever the budget
        self.engine: EngineCheck | None = None


def _plan(cfg: ExportConfig, clock: _Clock, show_bars: bool) -> tuple[ExportReport, _State]:
    """Load, prepare, alphas, approximate: everything `--dry-run` shows."""
    _check_memory_before_loading(cfg)
    with clock("load"):
        loaded = load_configured_model(cfg)
    if cfg.alpha_eps is None:  # the threat model the checkpoint was trained for, if it says
        cfg.alpha_eps = loaded.trained_eps or DEFAULT_ALPHA_EPS
        if cfg.calib is not None:  # only the attacks on calibration data use it
            source = "the checkpoint's training eps" if loaded.trained_eps else "the default"
            cfg.notes.append(f"--alpha-eps {cfg.alpha_eps:.4g}: {source}")
    model, shape, normalization = prepare_model(loaded, cfg)
    batch = _forward_batch(cfg, loaded.fixed_batch)
    check_model_memory(
        f"{Path(cfg.model).name} at input shape {'x'.join(map(str, shape))} and batch {batch}",
        estimate_model_memory(model, shape, batch),
    )
    state = _State(loaded, model, shape)
    classes = check_forward(model, shape, loaded.fixed_batch)
    if cfg.calib is not None:
        with clock("data"):
            state.data, state.held_out = _calibration_data(cfg, shape, classes)
    report = ExportReport(
        tool_version=_tool_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        dry_run=cfg.dry_run,
        settings=cfg.to_dict(),
        model={
            **loaded.to_dict(),
            "input_shape": list(shape),
            "normalization": normalization,
            "alphas": "not used (--no-gdws)",
            "classes": classes,
        },
        versions=_versions(),
    )
    report.macs["original"], report.params["original"] = count_macs_params(model, shape)
    exclude = match_layer_patterns(cfg.exclude, model)
    report.original_ships = no_replacement_reason(model, cfg.model, exclude) if cfg.gdws else None
    if report.original_ships is not None:
        report.model["alphas"] = "not used (no replaceable conv)"
    elif cfg.gdws:
        costs = None
        if cfg.time_ratio is not None:
            from gdws_export.lowering import measure_layer_costs

            batch = _engine_batch(cfg, state)
            with clock("layer_costs", f" (ONNX Runtime, batch {batch})"):
                costs = measure_layer_costs(model, shape, batch=batch, threads=cfg.threads)
            if cfg.target != "ort":
                report.warnings.append(
                    f"--time-ratio priced the layers by ONNX Runtime CPU timings, not on the "
                    f"{cfg.target} target: check the engine's speed with `gdws-export bench`"
                )
        if cfg.searches():
            candidate = _search(cfg, state, report, clock, show_bars)
        else:
            measures = _candidate_measures(cfg, state, report)
            built = {m: _build(cfg, m, state, costs, clock, show_bars) for m in measures}
            chosen = _choose(cfg, built, state, report, clock) if len(built) > 1 else measures[0]
            candidate = built[chosen]
        if candidate is None:  # nothing within the robust-accuracy budget: the original ships
            report.model["alphas"] = "not used (the search shipped the original)"
            report.timings = dict(clock.timings)
            return report, state
        state.gdws_model, state.alphas = candidate.model, candidate.alphas
        report.model["alphas"] = candidate.alphas.source
        if candidate.refit is not None:
            report.refit = candidate.refit.to_dict()
        report.approximation = candidate.approximation.to_dict()
        not_run = [lay.name for lay in candidate.approximation.layers if lay.reason == NOT_RUN]
        if not_run:
            report.warnings.append(
                f"conv {', '.join(not_run)} did not run on an input of shape "
                f"{'x'.join(map(str, shape))}: kept exact; a forward that branches on the "
                "data exports only the branch such inputs take"
            )
        report.macs["gdws"], report.params["gdws"] = count_macs_params(state.gdws_model, shape)
        report.parity["approximation"] = _approximation_figures(model, state.gdws_model, state, cfg)
    report.timings = dict(clock.timings)
    return report, state


def _forward_batch(cfg: ExportConfig, fixed_batch: int | None) -> int:
    """The largest batch one forward of the run takes: --batch, or the parity inputs."""
    return fixed_batch or max(cfg.batch or 1, PARITY_INPUTS)


def _check_memory_before_loading(cfg: ExportConfig) -> None:
    """Refuse an input or an --arch too big for memory before the loader allocates it.

    The loader builds a state_dict's architecture with real weights: estimated first on the
    meta device, from --arch, --arch-kwargs and --input-shape alone.
    """
    batch = _forward_batch(cfg, None)
    if cfg.input_shape is not None:
        shape = "x".join(map(str, cfg.input_shape))
        check_memory(f"--input-shape {shape} at batch {batch}", input_bytes(cfg.input_shape, batch))
    if cfg.arch is not None:
        kwargs = dict(cfg.arch_kwargs or {})
        if cfg.num_classes is not None:
            kwargs["num_classes"] = cfg.num_classes
        estimate = estimate_arch_memory(cfg.arch, kwargs, cfg.input_shape, batch)
        if estimate is not None:
            check_model_memory(f"--arch {cfg.arch} at batch {batch}", estimate)


def _build(cfg: ExportConfig, measure: str, state: _State, costs, clock, show_bars) -> _Candidate:
    """The GDWS model with `measure`'s alphas, refit when the config says so."""
    start = time.perf_counter()
    if measure not in state.alphas_by_measure:
        state.alphas_by_measure[measure] = _alphas(cfg, measure, state, clock, show_bars)
    alphas = state.alphas_by_measure[measure]
    which = f" ({measure} alphas)" if cfg.sensitivity == "auto" else ""
    if cfg.searches():
        which = f" (MAC ratio {cfg.mac_ratio:g}{', ' + measure + ' alphas' if which else ''})"
    with clock("approximate", which):
        model, approx = approximate(
            state.model, beta=cfg.beta, mac_ratio=cfg.mac_ratio, time_ratio=cfg.time_ratio,
            layer_costs=costs, alphas=alphas.alphas, input_moments=alphas.moments,
            input_shape=state.shape, max_layer_error=cfg.max_layer_error,
            exclude=match_layer_patterns(cfg.exclude, state.model) or None,
        )  # fmt: skip
    refit = None
    if cfg.refit and approx.replaced:
        x, y = state.data
        with clock("refit", f"{which} ({len(x)} samples, clean and PGD)"):
            model, refit = refit_pointwise(
                model, state.model, (x, y), eps=cfg.alpha_eps, step_size=cfg.alpha_eps / 4,
                samples=len(x), seed=cfg.seed, batch_size=state.loaded.fixed_batch or 64,
            )  # fmt: skip
    return _Candidate(alphas, model, approx, refit, time.perf_counter() - start)


def _candidate_measures(cfg: ExportConfig, state: _State, report) -> tuple[str, ...]:
    """The measures to build models with: all of `--sensitivity auto`'s candidates only when
    enough held-out images can judge them; else just the one that ships (the first), with a
    warning, since a candidate that cannot be judged would be built for nothing."""
    if cfg.sensitivity != "auto":
        return (cfg.sensitivity,)
    held_out = len(state.held_out[0])
    if held_out >= MIN_HELD_OUT:
        return AUTO_MEASURES
    first = AUTO_MEASURES[0]
    report.warnings.append(
        f"--sensitivity auto: --calib has {held_out} images after the first --calib-samples "
        f"({cfg.calib_samples}), too few to judge the measures (at least {MIN_HELD_OUT}); "
        f"built and shipped {first} alone, the first candidate: pass more images or a smaller "
        "--calib-samples"
    )
    return (first,)


def _choose(cfg: ExportConfig, built: dict[str, _Candidate], state: _State, report, clock) -> str:
    """`--sensitivity auto`: the measure whose model is most robust on the held-out images."""
    x, y = state.held_out
    with clock("choose", f" ({len(x)} images, PGD-{SELECTION_STEPS})"):
        choice = choose_measure(
            {m: c.model for m, c in built.items()}, x, y,
            selection_attack(cfg.alpha_eps, seed=cfg.seed),
            build_seconds={m: c.seconds for m, c in built.items()},
            batch_size=_attack_batch(state),
        )  # fmt: skip
    report.sensitivity_choice = choice.to_dict()
    return choice.chosen


def _search(cfg: ExportConfig, state: _State, report, clock, show_bars) -> _Candidate | None:
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
    batch = _attack_batch(state)
    with clock("search", f" (the original, {attack.describe()}, {len(x)} images)"):
        original_clean, original = judge(state.model, x, y, attack, batch)
    measures = _candidate_measures(cfg, state, report)  # enough held-out images: checked above
    built: dict[tuple[float, str], _Candidate] = {}
    probes: list[Probe] = []

    def evaluate(ratio: float) -> Probe:
        nonlocal measures
        trial = replace(cfg, mac_ratio=ratio)
        at_ratio = []
        for measure in measures:
            candidate = _build(trial, measure, state, None, clock, show_bars)
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
        with _ProbeTimer(cfg, state) as speed:
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


class _ProbeTimer:
    """`--min-speedup`: each probe's speed-up on ONNX Runtime, measured as it would ship: its
    graph exported with the export's lowering, timed interleaved against the original graph
    (exported once) at `--batch` and `--threads`, medians."""

    def __init__(self, cfg: ExportConfig, state: _State) -> None:
        self.cfg, self.state = cfg, state
        self.batch = _engine_batch(cfg, state)

    def __enter__(self) -> _ProbeTimer:
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
                    parity_inputs=_parity_inputs(self.state, self.cfg.seed),
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


def _engine_batch(cfg: ExportConfig, state: _State) -> int:
    """The batch the engine is exported and timed at: the model's fixed batch, or --batch."""
    return state.loaded.fixed_batch or cfg.batch or 1


def _attack_batch(state: _State) -> int:
    """Images per attack batch on held-out images: the same everywhere, so the same model and
    images get the same adversarial images (each batch draws its own random start)."""
    return state.loaded.fixed_batch or 128


def _held_out_accuracy(cfg, report: ExportReport, state: _State, out: Path, clock) -> None:
    """Clean and robust accuracy of the original and of what ships, on the held-out images:
    the attack that judged the candidates, white-box on each PyTorch model, and its images
    replayed on each engine (original.onnx on ONNX Runtime; the shipped engine), so the
    report says what the engine keeps, not only what PyTorch measured."""
    from gdws_export.harness.accuracy import evaluate_accuracy
    from gdws_export.runtimes.build import open_runner
    from gdws_export.runtimes.onnxruntime import OrtRunner

    x, y = state.held_out
    attack = selection_attack(cfg.alpha_eps, seed=cfg.seed)
    engines = {
        "original": OrtRunner(os.fspath(out / "original.onnx"), threads=cfg.threads),
        "shipped": open_runner(cfg.target, out / report.files["engine"],
                               out / report.files["engine_settings"]),
    }  # fmt: skip
    models = {"original": state.model, "shipped": state.shipped_model}
    with clock("held_out", f" ({len(x)} images, {attack.describe()}, replayed on the engines)"):
        accuracy = evaluate_accuracy(models, x, y, attacks=[attack], engines=engines,
                                     batch_size=_attack_batch(state),
                                     data=f"{cfg.calib} (held-out images)")  # fmt: skip
    report.held_out_accuracy = accuracy.to_dict()


def _export_and_build(cfg, report: ExportReport, state: _State, out: Path, clock) -> None:
    """Export the ONNX graphs, build the engine, check it: everything into `out`."""
    from gdws_export.runtimes.tensorrt import DEFAULT_BATCH

    fixed = state.loaded.fixed_batch
    dynamic = cfg.dynamic_batch and fixed is None
    if fixed is not None and (cfg.dynamic_batch or (cfg.batch or fixed) != fixed):
        report.warnings.append(
            f"the model fixes its batch size to {fixed}: exported with that static batch"
        )
    batch = _engine_batch(cfg, state)
    if not dynamic:
        profile = (batch, batch, batch)
    else:
        profile = (1, cfg.batch, cfg.batch) if cfg.batch else DEFAULT_BATCH
    inputs = _parity_inputs(state, cfg.seed)
    source = _export_graphs(cfg, report, state, out, clock, dynamic, batch, inputs)
    if state.alphas is not None and state.alphas.computed:
        measured = (
            {}
            if state.data is None
            else dict(data=cfg.calib, samples=len(state.data[0]), eps=cfg.alpha_eps, seed=cfg.seed)
        )
        save_alphas(state.alphas.alphas, out / "alphas.pt", input_moments=state.alphas.moments,
                    sensitivity=state.alphas.measure, **measured)  # fmt: skip
        report.files["alphas"] = "alphas.pt"
    _build_and_check(cfg, report, state, out, clock, source, dynamic, batch, profile, inputs)


def _export_graphs(cfg, report, state: _State, out: Path, clock, dynamic, batch, inputs) -> Path:
    """original.onnx and gdws.onnx (checked against PyTorch); returns the engine's source."""
    from gdws_export.lowering import export_onnx

    common = dict(
        input_shape=state.shape, exporter=cfg.exporter, opset=cfg.opset, dynamic_batch=dynamic,
        parity_inputs=inputs, threads=cfg.threads, batch=batch,
        metadata={**{k: report.settings[k]
                     for k in ("beta", "mac_ratio", "time_ratio", "lowering", "seed")},
                  "alphas": report.model["alphas"]},
    )  # fmt: skip
    with clock("export_original"):
        original = export_onnx(state.model, path=out / "original.onnx", lowering="gather", **common)
    _take_export(report, "original", original, out)
    if state.gdws_model is None:
        state.shipped_model = state.model
        return out / "original.onnx"
    with clock("export_gdws", f" (lowering {cfg.lowering})"):
        gdws = export_onnx(
            state.gdws_model, path=out / "gdws.onnx", lowering=cfg.lowering,
            original=state.model, **common,
        )  # fmt: skip
    _take_export(report, "gdws", gdws, out)
    if gdws.network_plan == "dense":  # `auto` timed the GDWS graph no faster than the original
        report.original_ships = gdws.speed_check
    report.macs["shipped"] = report.macs["original"] - gdws.macs["original"] + gdws.macs["shipped"]
    kept = gdws.dense_layers
    state.shipped_model = state.gdws_model
    if kept:  # the original conv was faster there: what ships is the model with those convs
        shipped = state.shipped_model = copy.deepcopy(state.gdws_model)
        put_back_originals(shipped, state.model, kept)
        report.params["shipped"] = count_params(shipped)
        figures = _approximation_figures(state.model, shipped, state, cfg)
        report.parity["approximation"] = {**figures, "original_convs_kept": kept}
    return out / "gdws.onnx"


def _build_and_check(cfg, report, state, out, clock, source, dynamic, batch, profile, inputs):
    """Build the engine from `source` and run it against its reference (see engine.py): the
    ONNX graph, for every target, so the torch target's program is held to what it ships."""
    from gdws_export.runtimes.build import build
    from gdws_export.runtimes.onnxruntime import OrtRunner
    from gdws_export.runtimes.torch_program import export_program

    graph = source
    # What ships as a torch.export program: the torch target's engine, and for the other
    # targets the engine's PyTorch twin (shipped.pt2), which white-box attacks and benchmarks
    # can load to evaluate exactly what the engine computes. gdws.onnx's per-layer decisions
    # are applied to it: the program computes what the graph does.
    program = source.with_suffix(".pt2") if cfg.target == "torch" else out / "shipped.pt2"
    with clock("export_program"):
        example = torch.rand(2 if dynamic else batch, *state.shape)
        export_program(state.shipped_model, example, program, dynamic_batch=dynamic)
    report.files["shipped_program"] = program.name
    if cfg.target == "torch":  # the torch target runs the program, not ONNX
        source = program
    options = {
        "ort": {"threads": cfg.threads},
        "trt": {"batch": profile, "workspace_mib": cfg.workspace_mib,
                "timing_cache": cfg.timing_cache},
        "torch": {"threads": cfg.threads},
    }[cfg.target]  # fmt: skip
    if cfg.precision == "int8":
        options["calibration"] = state.data[0].numpy()
    with clock("build", f" ({cfg.target}, {cfg.precision})"):
        built = build(source, target=cfg.target, precision=cfg.precision, output_dir=out,
                      **options)  # fmt: skip
    relocate_build(built, out)
    report.build = built.to_dict()
    report.versions.update(built.versions)
    report.warnings += built.warnings
    report.files["engine"] = built.engine_path
    report.files["engine_settings"] = built.settings_path
    # ONNX Runtime runs a fixed-batch graph in its own batches, which a fixed-batch model in
    # PyTorch cannot be asked to do
    reference = OrtRunner(os.fspath(graph))
    reference_name = f"its ONNX graph {graph.name} on ONNX Runtime"
    with clock("check_engine"):
        state.engine = check_engine(
            out / built.engine_path, out / built.settings_path, reference, inputs,
            reference_name=reference_name, target=cfg.target, precision=cfg.precision,
            max_batch_size=profile[2] if dynamic else 0,
        )  # fmt: skip
    if state.engine.parity is not None:
        report.parity["engine"] = state.engine.parity
    report.warnings += state.engine.warnings


def _take_export(report: ExportReport, role: str, result, out: Path) -> None:
    """Record a lowering ExportResult; its own report file is folded into report.json."""
    from gdws_export.lowering.export import default_opset

    data = result.to_dict()
    Path(result.report_path).unlink(missing_ok=True)
    data["opset"] = default_opset(result.onnx_path)  # what the written file carries
    data["onnx_path"] = os.path.relpath(result.onnx_path, out)
    data.pop("report_path", None)
    report.exports[role] = data
    report.files[f"{role}_onnx"] = data["onnx_path"]
    report.parity[f"onnx_{role}"] = result.parity.to_dict()


def _calibration_data(cfg: ExportConfig, shape, classes: int):
    """(calibration images, labels) and, for sensitivity "auto", the held-out ones after
    them (else None)."""
    from gdws_export.harness.data import load_dataset

    held_out = cfg.held_out_samples if cfg.holds_out() else 0
    limit = cfg.calib_samples + held_out
    x, y = load_dataset(cfg.calib, split="train", limit=limit, input_shape=shape)
    if len(y) and int(y.max()) >= classes:
        raise InvalidInputError(
            f"--calib {cfg.calib} has label {int(y.max())} but the model has {classes} outputs; "
            "pass data of the model's task"
        )
    n = cfg.calib_samples
    if not held_out:
        return (x, y), None
    return (x[:n], y[:n]), (x[n:], y[n:])


def _alphas(cfg: ExportConfig, measure: str, state: _State, clock, show_bars: bool) -> _Alphas:
    """`measure`'s alphas (or the --alphas file's), with where they came from."""
    if cfg.alphas is not None:
        alphas = match_alpha_names(load_alphas(cfg.alphas), state.model, cfg.alphas)
        moments = load_input_moments(cfg.alphas)
        if moments is not None:
            moments = match_alpha_names(moments, state.model, cfg.alphas)
            return _Alphas(measure, alphas, moments, False, f"file {cfg.alphas} (activation-aware)")
        return _Alphas(measure, alphas, None, False, f"file {cfg.alphas}")
    chosen = " (chosen by --sensitivity auto)" if cfg.sensitivity == "auto" else ""
    if measure == "none":
        how = "chosen by --sensitivity auto" if chosen else "--sensitivity none"
        return _Alphas(measure, None, None, False, f"none (unweighted, {how})")
    if measure == "relative":  # from the weights alone: no data needed
        with clock("alphas", " (relative: per-layer 1/||W||^2)"):
            alphas = relative_gains(state.model)
        source = f"relative (per-layer 1/||W||^2 of the weights, no data){chosen}"
        return _Alphas(measure, alphas, None, True, source)
    if state.data is None:
        return _Alphas("none", None, None, False,
                       f"none (unweighted; --sensitivity {measure} needs --calib data, or pass "
                       "--alphas)")  # fmt: skip
    x, y = state.data
    common = dict(samples=len(x), eps=cfg.alpha_eps, step_size=cfg.alpha_eps / 4, seed=cfg.seed,
                  batch_size=state.loaded.fixed_batch or 64)  # fmt: skip
    moments = None
    with clock("alphas", f" ({measure}, PGD on {len(x)} calibration samples)"):
        if measure == "activation":
            moments = input_moments(state.model, (x, y), **common)
            alphas = activation_gains(state.model, moments)
        elif measure == "calibrated":
            alphas = calibrated_gains(state.model, (x, y), **common)
        else:
            alphas = noise_gains(state.model, (x, y), progress=show_bars, **common)
    source = f"{measure}, computed on {cfg.calib} ({len(x)} samples, PGD eps {cfg.alpha_eps:.4g})"
    return _Alphas(measure, alphas, moments, True, source + chosen)


def _parity_inputs(state: _State, seed: int) -> np.ndarray:
    if state.data is not None:
        return state.data[0][:PARITY_INPUTS].numpy()
    rng = np.random.default_rng(seed)
    return rng.random((PARITY_INPUTS, *state.shape), dtype=np.float32)


def _approximation_figures(model, gdws_model, state: _State, cfg) -> dict:
    """How far the GDWS model's logits are from the original's (informative, never fails),
    and on which inputs: random ones (no --calib) cannot judge top-1 agreement."""
    from gdws_export.pipeline.engine import compare

    x = torch.from_numpy(_parity_inputs(state, cfg.seed))
    batch = state.loaded.fixed_batch
    with torch.no_grad():
        chunks = [x[i : i + 1] for i in range(len(x))] if batch else [x]
        reference = torch.cat([model(c) for c in chunks]).numpy()
        approximated = torch.cat([gdws_model(c) for c in chunks]).numpy()
    inputs = "random" if state.data is None else "calibration"
    return {**compare(reference, approximated, tolerance=None), "inputs": inputs}


class _Clock:
    """Times stages and reports them to the progress callback."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str, detail: str = "") -> Iterator[None]:
        label = STAGES[stage] + detail
        if self.progress:
            self.progress(stage, label, None)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        # a stage run once per candidate measure ("auto") adds up
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)
        if self.progress:
            self.progress(stage, label, seconds)


def _tool_version() -> str:
    from gdws_export import __version__

    return __version__


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "gdws-export": _tool_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
