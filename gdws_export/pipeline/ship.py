"""What ships: the ONNX graphs exported and checked, the engine built and checked against
its graph, the PyTorch twin saved, and the held-out accuracy of both engines."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from gdws_export.gdws.selection import count_params
from gdws_export.gdws.sensitivity import (
    save_alphas,
)
from gdws_export.harness.measure_choice import (
    selection_attack,
)
from gdws_export.lowering.lower import put_back_originals
from gdws_export.pipeline.candidates import approximation_figures
from gdws_export.pipeline.engine import check_engine, relocate_build
from gdws_export.pipeline.report import ExportReport
from gdws_export.pipeline.stages import ExportState, attack_batch, engine_batch, parity_inputs


def ship(cfg, report: ExportReport, state: ExportState, out: Path, clock) -> None:
    """Export the ONNX graphs, build the engine, check it: everything into `out`."""
    from gdws_export.runtimes.tensorrt import DEFAULT_BATCH

    fixed = state.loaded.fixed_batch
    dynamic = cfg.dynamic_batch and fixed is None
    if fixed is not None and (cfg.dynamic_batch or (cfg.batch or fixed) != fixed):
        report.warnings.append(
            f"the model fixes its batch size to {fixed}: exported with that static batch"
        )
    batch = engine_batch(cfg, state)
    if not dynamic:
        profile = (batch, batch, batch)
    else:
        profile = (1, cfg.batch, cfg.batch) if cfg.batch else DEFAULT_BATCH
    inputs = parity_inputs(state, cfg.seed)
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


def _export_graphs(
    cfg, report, state: ExportState, out: Path, clock, dynamic, batch, inputs
) -> Path:
    """original.onnx and gdws.onnx (checked against PyTorch); returns the engine's source."""
    from gdws_export.lowering import export_onnx

    common = dict(
        input_shape=state.shape, exporter=cfg.exporter, opset=cfg.opset, dynamic_batch=dynamic,
        parity_inputs=inputs, threads=cfg.threads, batch=batch,
        metadata={**{k: report.settings[k]
                     for k in ("method", "beta", "mac_ratio", "time_ratio", "lowering",
                               "seed")},
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
    # The lowering knows the GDWS layers; the other methods' layers ship as they were built.
    others = sum(layer["macs_after"] - layer["macs_before"]
                 for layer in (report.approximation or {}).get("layers", ())
                 if layer["status"] not in ("skipped", "original", "gdws"))  # fmt: skip
    report.macs["shipped"] = (
        report.macs["original"] - gdws.macs["original"] + gdws.macs["shipped"] + others
    )
    kept = gdws.dense_layers
    state.shipped_model = state.gdws_model
    if kept:  # the original conv was faster there: what ships is the model with those convs
        shipped = state.shipped_model = copy.deepcopy(state.gdws_model)
        put_back_originals(shipped, state.model, kept)
        report.params["shipped"] = count_params(shipped)
        figures = approximation_figures(state.model, shipped, state, cfg)
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


def measure_held_out(cfg, report: ExportReport, state: ExportState, out: Path, clock) -> None:
    """Clean and robust accuracy of the original and of what ships, on the held-out images:
    the attack that judged the candidates, white-box on each PyTorch model, and its images
    replayed on each engine (original.onnx on ONNX Runtime; the shipped engine), so the
    report says what the engine keeps, not only what PyTorch measured. An INT8 engine is
    attacked through its fake-quantized twin (runtimes/fake_quant.py), not the float model."""
    from gdws_export.harness.accuracy import evaluate_accuracy
    from gdws_export.runtimes.build import open_runner
    from gdws_export.runtimes.fake_quant import twin_of_engine
    from gdws_export.runtimes.onnxruntime import OrtRunner

    x, y = state.held_out
    attack = selection_attack(cfg.alpha_eps, seed=cfg.seed)
    engines = {
        "original": OrtRunner(os.fspath(out / "original.onnx"), threads=cfg.threads),
        "shipped": open_runner(cfg.target, out / report.files["engine"],
                               out / report.files["engine_settings"]),
    }  # fmt: skip
    models = {"original": state.model, "shipped": state.shipped_model}
    if cfg.precision == "int8":  # the float model's attacks would only measure transfer
        models["shipped"] = twin_of_engine(cfg.target, out / report.files["engine"],
                                           out / report.files["engine_settings"])  # fmt: skip
    with clock("held_out", f" ({len(x)} images, {attack.describe()}, replayed on the engines)"):
        accuracy = evaluate_accuracy(models, x, y, attacks=[attack], engines=engines,
                                     batch_size=attack_batch(state),
                                     data=f"{cfg.calib} (held-out images)")  # fmt: skip
    report.held_out_accuracy = accuracy.to_dict()
