"""`run_export`: model file -> (alphas) -> GDWS model -> ONNX graphs -> engine -> reports.

Everything is written into a temporary directory beside the output directory
(`.<name>.partial-<pid>-XXXX`) and renamed into place at the very end, so an interrupted or failed
run leaves no directory that looks complete; the Triton model directory likewise. Nothing here
prints or exits: progress goes to a callback, errors are `GDWSExportError`s.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from gdws_export.gdws.approximate import NOT_RUN
from gdws_export.limits import (
    check_memory,
    check_model_memory,
    estimate_arch_memory,
    estimate_model_memory,
    input_bytes,
)
from gdws_export.methods import get_method
from gdws_export.pipeline.candidates import (
    approximation_figures,
    build_candidate,
    calibration_data,
    candidate_measures,
    choose_candidate_measure,
)
from gdws_export.pipeline.config import DEFAULT_ALPHA_EPS, ExportConfig
from gdws_export.pipeline.model import (
    check_forward,
    count_macs_params,
    load_configured_model,
    match_layer_patterns,
    no_replacement_reason,
    prepare_model,
)
from gdws_export.pipeline.outputs import Staging, check_destination
from gdws_export.pipeline.report import ExportReport
from gdws_export.pipeline.search import search_operating_point
from gdws_export.pipeline.ship import measure_held_out, ship
from gdws_export.pipeline.stages import (
    PARITY_INPUTS,
    Clock,
    ExportState,
    ProgressCallback,
    engine_batch,
)


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
    clock = Clock(progress)
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
        ship(cfg, report, state, staged.path, clock)
        if state.held_out is not None and len(state.held_out[0]):
            measure_held_out(cfg, report, state, staged.path, clock)
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


def _plan(cfg: ExportConfig, clock: Clock, show_bars: bool) -> tuple[ExportReport, ExportState]:
    """Load, prepare, alphas, approximate: everything `--dry-run` shows."""
    report, state = load_for_export(cfg, clock)
    plan_export(cfg, state, report, clock, show_bars)
    return report, state


def load_for_export(cfg: ExportConfig, clock: Clock) -> tuple[ExportReport, ExportState]:
    """Load and prepare the model and read the calibration data: what every export of one
    model shares (a sweep exports several from one load). Fills in `cfg.alpha_eps`.

    Returns:
        The report so far (settings, model, the original's MACs) and the stages' state.
    """
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
    state = ExportState(loaded, model, shape)
    classes = check_forward(model, shape, loaded.fixed_batch)
    if cfg.calib is not None:
        with clock("data"):
            state.data, state.held_out = calibration_data(cfg, shape, classes)
    report = _new_report(cfg, state, normalization, classes)
    report.timings = dict(clock.timings)
    return report, state


def plan_export(
    cfg: ExportConfig, state: ExportState, report: ExportReport, clock: Clock, show_bars: bool
) -> None:
    """Decide what ships: the method's model at the config's budget, the operating point the
    search finds, or the original (`--no-gdws`, nothing to replace, nothing within budget).
    Sets `state.gdws_model` (None: the original ships) and the report's approximation."""
    exclude = match_layer_patterns(cfg.exclude, state.model)
    report.original_ships = (
        no_replacement_reason(state.model, cfg.model, exclude, cfg.method) if cfg.gdws else None
    )
    if report.original_ships is not None:
        report.model["alphas"] = f"not used (no replaceable {get_method(cfg.method).layer_noun})"
    elif cfg.gdws:
        if cfg.searches():
            candidate = search_operating_point(cfg, state, report, clock, show_bars)
        else:
            costs = _layer_costs(cfg, state, report, clock)
            measures = candidate_measures(cfg, state, report)
            built = {m: build_candidate(cfg, m, state, costs, clock, show_bars) for m in measures}
            chosen = measures[0]
            if len(built) > 1:
                chosen = choose_candidate_measure(cfg, built, state, report, clock)
            candidate = built[chosen]
        if candidate is None:  # nothing within the robust-accuracy budget: the original ships
            report.model["alphas"] = "not used (the search shipped the original)"
        else:
            _take_candidate(cfg, state, report, candidate)
    report.timings = dict(clock.timings)


def _layer_costs(cfg: ExportConfig, state: ExportState, report: ExportReport, clock: Clock):
    """`--time-ratio`: every replaceable conv's measured cost (once per state), else None."""
    if cfg.time_ratio is None:
        return None
    if state.layer_costs is None:
        from gdws_export.lowering import measure_layer_costs

        batch = engine_batch(cfg, state)
        with clock("layer_costs", f" (ONNX Runtime, batch {batch})"):
            state.layer_costs = measure_layer_costs(
                state.model, state.shape, batch=batch, threads=cfg.threads
            )
    if cfg.target != "ort":
        report.warnings.append(
            f"--time-ratio priced the layers by ONNX Runtime CPU timings, not on the "
            f"{cfg.target} target: check the engine's speed with `gdws-export bench`"
        )
    return state.layer_costs


def _take_candidate(cfg: ExportConfig, state: ExportState, report: ExportReport, candidate):
    """The chosen candidate ships: into the state and the report."""
    shape = state.shape
    state.gdws_model, state.alphas = candidate.model, candidate.alphas
    report.model["alphas"] = candidate.alphas.source
    if cfg.sensitivity == "auto":  # the settings say what was built, so they rebuild it
        report.settings["sensitivity"] = candidate.alphas.measure
    if candidate.refit is not None:
        report.refit = candidate.refit.to_dict()
    report.approximation = candidate.approximation.to_dict()
    not_run = [lay.name for lay in candidate.approximation.layers if lay.reason == NOT_RUN]
    if not_run:
        kind = "conv" if cfg.method == "gdws" else "layer"
        report.warnings.append(
            f"{kind} {', '.join(not_run)} did not run on an input of shape "
            f"{'x'.join(map(str, shape))}: kept exact; a forward that branches on the "
            "data exports only the branch such inputs take"
        )
    report.macs["gdws"], report.params["gdws"] = count_macs_params(state.gdws_model, shape)
    report.parity["approximation"] = approximation_figures(
        state.model, state.gdws_model, state, cfg
    )


def _new_report(cfg: ExportConfig, state: ExportState, normalization, classes) -> ExportReport:
    """The report as loading leaves it: settings, the model and its MACs, versions."""
    report = ExportReport(
        tool_version=_tool_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        dry_run=cfg.dry_run,
        settings=cfg.to_dict(),
        model={
            **state.loaded.to_dict(),
            "input_shape": list(state.shape),
            "normalization": normalization,
            "alphas": "not used (--no-gdws)",
            "classes": classes,
        },
        versions=_versions(),
    )
    original = count_macs_params(state.model, state.shape)
    report.macs["original"], report.params["original"] = original
    return report


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
