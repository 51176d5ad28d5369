"""The built engine: its real inputs and outputs, parity with its source, file locations.

The ONNX graph was already checked against PyTorch by the lowering; here the engine (the
ONNX Runtime model file with its session settings, the TensorRT engine, or the torch.export
program with its settings) is run on the same inputs as a reference runner: ONNX Runtime on
the ONNX graph it was made from, or for the torch target on the ONNX graph its program must
compute (`gdws.onnx`, whose per-layer decisions the program applies). FP32 engines must match
(ParityError otherwise); FP16/INT8 figures are reported, with a warning when they miss the
looser bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gdws_export.errors import GDWSExportError, ParityError
from gdws_export.runtimes.base import Runner, TensorSpec
from gdws_export.runtimes.build import open_runner

# Bound on max |diff| / logit scale, per precision; only fp32 fails the export.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}


@dataclass
class EngineCheck:
    """The engine's tensors and how its outputs compare with its source's."""

    engine: Path
    target: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    parity: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def write_triton(self, model_dir: Path, name: str) -> dict:
        """Write the Triton model for this engine into `model_dir`; returns its description."""
        from gdws_export.serving.triton import write_triton_model

        model = write_triton_model(
            model_dir, name=name, engine=self.engine, target=self.target, inputs=self.inputs,
            outputs=self.outputs, max_batch_size=self.max_batch_size,
        )  # fmt: skip
        return model.to_dict()


def compare(reference: np.ndarray, candidate: np.ndarray, *, tolerance: float | None) -> dict:
    """Parity figures of two logit arrays as a dict; `passed` is None without a tolerance."""
    from gdws_export.lowering.parity import compare_logits

    report = compare_logits(reference, candidate, tolerance=tolerance or 0.0).to_dict()
    if tolerance is None:
        report["tolerance"], report["passed"] = None, None
    return report


def check_engine(
    engine: Path,
    settings: Path,
    reference: Runner,
    inputs: np.ndarray,
    *,
    reference_name: str,
    target: str,
    precision: str,
    max_batch_size: int,
) -> EngineCheck:
    """Run the engine and `reference` (its source) on `inputs`; read the engine's tensors.

    `reference_name` names the reference in messages ("its ONNX graph gdws.onnx").

    A TensorRT engine needs a GPU to run: without one its tensors are read from the reference
    (the source graph: TensorRT keeps its names, shapes and float32 I/O) and parity is skipped
    with a warning.

    Raises:
        ParityError: an FP32 engine's outputs differ from the reference's.
    """
    warnings: list[str] = []
    with reference:
        expected = _run(reference, inputs)
        graph_io = reference.inputs(), reference.outputs()
    try:
        runner = open_runner(target, engine, settings)
        runner.activate()
    except GDWSExportError as exc:
        if target != "trt":
            raise
        warnings.append(f"the TensorRT engine was not run here ({exc}); parity not checked")
        return EngineCheck(engine, target, *graph_io, max_batch_size, None, warnings)
    try:
        candidate = _run(runner, inputs)
        io = runner.inputs(), runner.outputs()
    finally:
        runner.deactivate()
    parity = compare(expected, candidate, tolerance=TOLERANCES[precision])
    if not parity["passed"]:
        message = (
            f"the {precision} engine {engine.name} differs from {reference_name}: max |diff| "
            f"{parity['max_abs_diff']:.3g} ({parity['relative_diff']:.2g} of the logit scale, "
            f"bound {parity['tolerance']:g}), top-1 agreement "
            f"{100 * parity['top1_agreement']:.1f} %"
        )
        if precision == "fp32":
            raise ParityError(message + "; try --lowering gather, or rerun with -v and report it")
        warnings.append(message)
    return EngineCheck(engine, target, *io, max_batch_size, parity, warnings)


def relocate_build(built, out: Path) -> None:
    """Make a BuildResult's paths, and those in its settings file, relative to `out`.

    The build ran in the staging directory, which is renamed at the end: absolute paths into
    it would point nowhere.
    """
    built.engine_path = os.path.relpath(built.engine_path, out)
    built.settings_path = os.path.relpath(built.settings_path, out)
    built.source_onnx = os.path.relpath(built.source_onnx, out)
    settings = out / built.settings_path
    if built.target == "ort":
        from gdws_export.runtimes.onnxruntime import OrtSettings

        ort_settings = OrtSettings.load(settings)
        ort_settings.source_onnx = built.source_onnx
        ort_settings.save(settings)
    elif built.target == "trt":
        from gdws_export.runtimes.tensorrt import EngineInfo

        info = EngineInfo.load(settings)
        for key in ("engine_path", "onnx_path", "source_onnx_path"):
            value = getattr(info, key)
            if value and Path(value).resolve().is_relative_to(out.resolve()):
                setattr(info, key, os.path.relpath(value, out))
        info.save(settings)


def _run(runner: Runner, inputs: np.ndarray) -> np.ndarray:
    """Logits of `inputs`, in batches the runner takes (its own size when fixed)."""
    fixed = runner.inputs()[0].shape[0]
    batch = fixed if isinstance(fixed, int) and fixed > 0 else len(inputs)
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        if len(chunk) < batch:  # pad a fixed batch with repeats, keep our rows
            padded = np.concatenate([chunk] * -(-batch // len(chunk)))[:batch]
            outputs.append(runner.predict(padded)[: len(chunk)])
        else:
            outputs.append(runner.predict(chunk))
    return np.concatenate(outputs)
