"""Export one model for a runtime and build it: the path the sweep and the paper table share.

The auto lowering may find that a layer's original conv runs faster than any GDWS form and
ship it; `put_back_originals` (`gdws_export.lowering.lower`, the one place that does it) then
puts those convs back into the PyTorch model, so accuracy is measured (and attacked) on the
model that ships.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gdws_export.lowering.lower import put_back_originals
from gdws_export.runtimes.build import BuildResult


@dataclass
class Shipped:
    """What `export_and_build` made.

    Attributes:
        source: the file built: `<stem>.onnx`, or `<stem>.pt2` for target "torch".
        build: the engine or session (`build.runner()` runs it).
        original_layers: GDWS layers that ship their original conv (auto lowering).
        forms: the lowering form of each GDWS layer ({} for target "torch").
    """

    source: Path
    build: BuildResult
    original_layers: list[str] = field(default_factory=list)
    forms: dict[str, str] = field(default_factory=dict)


def export_and_build(
    model: nn.Module,
    stem: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int],
    target: str = "ort",
    precision: str = "fp32",
    lowering: str = "auto",
    original: nn.Module | None = None,
    parity_inputs: torch.Tensor | None = None,
    threads: int | None = None,
    exporter: str = "legacy",
    auto_batch: int = 1,
    candidates: tuple[str, ...] | None = None,
    repeats: int | None = None,
    trt_batch: tuple[int, int, int] | None = None,
    calibration: np.ndarray | None = None,
    timing_cache: str | os.PathLike | None = None,
) -> Shipped:
    """Export `model` to `<stem>.onnx` (checked against PyTorch) and build it for `target`.

    The suffix is appended, never swapped in: a stem like "gdws_r0.4" keeps its ratio.

    Args:
        model: the model to ship (GDWS convs included); not modified.
        stem: output path without suffix.
        input_shape: (C, H, W) of one image.
        target: "ort", "trt" or "torch" (a torch.export program, no ONNX).
        precision: "fp32", "fp16" or "int8" (`calibration` images then needed).
        lowering: "auto" or one form (see `gdws_export.lowering.forms`).
        original: the model before approximation; with "auto", layers may ship its convs.
        parity_inputs: real images for the ONNX-vs-PyTorch check.
        threads: ONNX Runtime threads (auto lowering's timings; the session for "ort").
        exporter: torch.onnx exporter, "legacy" or "dynamo".
        auto_batch: batch size the auto lowering times at.
        candidates / repeats: the auto lowering's forms and timing repeats (None: defaults).
        trt_batch: TensorRT optimization profile (min, opt, max) of the batch size.
        calibration: (N, C, H, W) images for INT8 calibration.
        timing_cache: TensorRT timing cache file (read and updated).
    """
    from gdws_export.lowering import export_onnx
    from gdws_export.runtimes.build import build

    stem = Path(stem)
    if target == "torch":
        from gdws_export.runtimes.torch_program import export_program

        program = export_program(model, tuple(input_shape), Path(f"{stem}.pt2"))
        return Shipped(Path(program), build(program, target="torch", precision=precision))
    auto_options = {
        key: value
        for key, value in (("candidates", candidates), ("repeats", repeats))
        if value is not None
    }
    exported = export_onnx(
        model, input_shape=tuple(input_shape), path=Path(f"{stem}.onnx"), lowering=lowering,
        exporter=exporter, parity_inputs=parity_inputs, threads=threads, batch=auto_batch,
        original=original, **auto_options,
    )  # fmt: skip
    options = {"timing_cache": timing_cache, "batch": trt_batch} if target == "trt" else {}
    built = build(
        exported.onnx_path, target=target, precision=precision,
        threads=threads if target == "ort" else None, calibration=calibration, **options,
    )  # fmt: skip
    original_layers = exported.dense_layers if original is not None else []
    return Shipped(Path(exported.onnx_path), built, original_layers, dict(exported.forms))


__all__ = ["Shipped", "export_and_build", "put_back_originals"]
