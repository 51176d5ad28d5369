"""Triton Inference Server model repositories: `<repo>/<name>/config.pbtxt` + `1/model.*`.

The config is written as protobuf text by hand (no tritonclient needed to write it); the
tests parse it with Triton's own schema (`tritonclient.grpc.model_config_pb2.ModelConfig`).

- platform: "tensorrt_plan" for TensorRT engines (`model.plan`), "onnxruntime_onnx" for ONNX
  Runtime models (`model.onnx`);
- inputs/outputs: the engine's own names, data types and dims;
- a dynamic batch axis gives `max_batch_size` (the largest batch of the engine profile), dims
  without the batch axis, and `dynamic_batching { }`; a fixed batch gives `max_batch_size: 0`
  and the full dims.

A TensorRT plan runs only on the TensorRT version and GPU model that built it: serve it with
the Triton release that ships the same TensorRT.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.runtimes.base import TensorSpec

PLATFORMS = {"trt": ("tensorrt_plan", "model.plan"), "ort": ("onnxruntime_onnx", "model.onnx")}
MODEL_VERSION = "1"
# A model name is a folder name in the repository: no separators, whitespace or control
# characters, and not "." or ".." (which name the repository or its parent).
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# numpy dtype -> Triton's DataType enum name (model_config.proto).
_TRITON_TYPES = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
}


@dataclass
class TritonModel:
    """What `write_triton_model` wrote."""

    name: str
    platform: str
    model_dir: str
    model_file: str
    max_batch_size: int
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_model_name(name: str, option: str = "name") -> None:
    """Refuse a model name that is not one folder name of the repository.

    Raises:
        InvalidInputError: the name holds other characters than letters, digits, '_', '.' and
            '-', or is '.' or '..'.
    """
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidInputError(
            f"{option} {name!r} is not a Triton model name: use letters, digits, '_', '.' and "
            "'-' only, and not '.' or '..'"
        )


def has_dynamic_batch(specs: Sequence[TensorSpec]) -> bool:
    """Whether every tensor's first axis is symbolic (a name, None or -1)."""
    return all(spec.shape and not _static(spec.shape[0]) for spec in specs)


def triton_config(
    name: str,
    target: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
) -> str:
    """The config.pbtxt text of one model.

    Args:
        name: the model's name in the repository.
        target: "trt" or "ort".
        inputs, outputs: the engine's tensors, batch axis first.
        max_batch_size: the largest batch the engine takes; 0 for a fixed-batch engine (its
            dims then include the batch axis).

    Raises:
        UnsupportedModelError: a data type Triton has no name for.
    """
    platform, _ = _platform(target)
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    for section, specs in (("input", inputs), ("output", outputs)):
        entries = []
        for spec in specs:
            dims = spec.shape[1:] if batched else spec.shape
            dims_text = ", ".join(str(d) if _static(d) else "-1" for d in dims)
            entries.append(
                f'  {{\n    name: "{spec.name}"\n    data_type: {_triton_type(spec)}\n'
                f"    dims: [ {dims_text} ]\n  }}"
            )
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if batched:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def write_triton_model(
    model_dir: str | os.PathLike[str],
    *,
    name: str,
    engine: str | os.PathLike[str],
    target: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
) -> TritonModel:
    """Write one model of a Triton repository: `model_dir/config.pbtxt` and `model_dir/1/model.*`.

    `model_dir` must not hold a model yet. Triton requires the directory's final name to be
    `name`: the pipeline writes under a temporary name beside `<repo>/<name>` and renames it at
    the end, so a failed run leaves no model directory that looks complete.

    Args:
        model_dir: the directory to fill (created if missing).
        name: the model's name in the repository and the config.
        engine: the TensorRT engine or ONNX Runtime model file, copied to `1/model.plan` or
            `1/model.onnx`.
        target: "trt" or "ort".
        inputs, outputs: the engine's tensors (`Runner.inputs()` / `outputs()`).
        max_batch_size: see `triton_config`.

    Returns:
        A TritonModel describing the files (paths relative to the repository).

    Example:
        >>> with OrtRunner("out/gdws.fp32.ort.onnx") as r:                  # doctest: +SKIP
        ...     write_triton_model("repo/lenet", name="lenet", engine=r.model, target="ort",
        ...                        inputs=r.inputs(), outputs=r.outputs(), max_batch_size=64)
    """
    platform, file_name = _platform(target)
    check_model_name(name)
    if max_batch_size < 0:
        raise InvalidInputError(f"max_batch_size must be >= 0, got {max_batch_size}")
    staging = Path(model_dir)
    version_dir = staging / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(engine, version_dir / file_name)
    config = triton_config(name, target, inputs, outputs, max_batch_size=max_batch_size)
    (staging / "config.pbtxt").write_text(config)
    return TritonModel(
        name=name,
        platform=platform,
        model_dir=name,
        model_file=f"{MODEL_VERSION}/{file_name}",
        max_batch_size=max_batch_size,
        inputs=[_describe(s, max_batch_size) for s in inputs],
        outputs=[_describe(s, max_batch_size) for s in outputs],
    )


def _describe(spec: TensorSpec, max_batch_size: int) -> dict:
    dims = spec.shape[1:] if max_batch_size > 0 else spec.shape
    return {
        "name": spec.name,
        "data_type": _triton_type(spec),
        "dims": [d if _static(d) else -1 for d in dims],
    }


def _platform(target: str) -> tuple[str, str]:
    if target not in PLATFORMS:
        raise InvalidInputError(
            f"Triton target must be one of {', '.join(PLATFORMS)}, got {target!r}"
        )
    return PLATFORMS[target]


def _triton_type(spec: TensorSpec) -> str:
    dtype = np.dtype(spec.dtype)
    if dtype not in _TRITON_TYPES:
        raise UnsupportedModelError(f"tensor '{spec.name}' has type {dtype}, which Triton lacks")
    return _TRITON_TYPES[dtype]


def _static(dim) -> bool:
    return isinstance(dim, int) and dim >= 0
