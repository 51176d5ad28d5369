"""Precision conversion of ONNX graphs: FP16 graphs, and INT8 as an explicitly quantized Q/DQ graph.

TensorRT 11 builds strongly typed networks only: precision comes from the graph's own types, so
an FP16 engine needs an FP16 graph and an INT8 engine needs QuantizeLinear/DequantizeLinear
nodes. The same graphs run on ONNX Runtime, which is how they are checked without a GPU.

FP16 uses ONNX Runtime's maintained converter (`onnxruntime.transformers.float16`, a fork of
onnxconverter-common's), so no extra dependency; INT8 uses `onnxruntime.quantization`, with
settings per target (`int8_settings`): symmetric INT8 for TensorRT, and for ONNX Runtime's CPU
kernels uint8 activations with the weight range chosen from the CPU's instruction set.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gdws_export.errors import InvalidInputError, UnsupportedModelError, shown
from gdws_export.runtimes.int8_settings import TENSORRT_INT8, Int8Settings
from gdws_export.runtimes.onnx_files import load_onnx
from gdws_export.runtimes.trt_support import qdq_problems

if TYPE_CHECKING:
    import onnx

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Ops whose input 1 is a weight that FP16 conversion must turn into float16.
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

CalibrationData = np.ndarray | Mapping[str, np.ndarray] | str | os.PathLike

_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16, without importing onnx here


def check_precision(precision: str) -> str:
    """Return `precision` if it is one of PRECISIONS, else raise InvalidInputError."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    return precision


def convert_to_fp16(
    model: onnx.ModelProto | str | os.PathLike, *, keep_io_types: bool = True
) -> onnx.ModelProto:
    """Convert a float32 graph to float16 (weights and activations).

    Args:
        model: the float32 model or its path (left unchanged).
        keep_io_types: keep float32 graph inputs/outputs (Cast nodes convert at the edges);
            False makes them float16 too.

    Returns:
        The float16 model, topologically sorted and checked: every weight of Conv/Gemm/MatMul is
        float16 and the float I/O have the asked type.

    Example:
        >>> fp16 = convert_to_fp16("model.onnx")  # doctest: +SKIP
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = load_onnx(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(source)  # the converter edits its argument in place
    converted = convert_float_to_float16(copy, keep_io_types=keep_io_types)
    # The converter appends the I/O Casts at the end of the node list; onnx.checker and
    # TensorRT's parser want producers before consumers.
    topological_sort(converted.graph)
    problems = fp16_problems(converted, keep_io_types=keep_io_types)
    if problems:
        raise UnsupportedModelError(
            f"FP16 conversion (gdws_export/runtimes/precision.py) left {len(problems)} problem(s): "
            + shown(problems, 5, "; ")
        )
    onnx.checker.check_model(converted)
    return converted


def fp16_problems(model: onnx.ModelProto, *, keep_io_types: bool) -> list[str]:
    """What is not as an FP16 conversion should leave it: float32 weights, wrong I/O types."""
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type in _WEIGHTED_OPS and len(node.input) > 1:
            dtype = initializers.get(node.input[1])
            if dtype is not None and dtype != _FLOAT16:
                problems.append(
                    f"weight {node.input[1]} of {node.op_type} {node.name} is not float16"
                )
    want, want_name = (_FLOAT, "float32") if keep_io_types else (_FLOAT16, "float16")
    for value in [*model.graph.input, *model.graph.output]:
        dtype = value.type.tensor_type.elem_type
        if dtype in (_FLOAT, _FLOAT16) and dtype != want:
            problems.append(f"graph input/output {value.name} is not {want_name}")
    return problems


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` in place so every node comes after the producers of its inputs.

    Stable: nodes already in order keep their relative order.
    """
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        blocked = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                blocked.append(node)
        if len(blocked) == len(pending):
            missing = sorted({n for node in blocked for n in node.input if n not in available})
            raise UnsupportedModelError(
                f"graph has a cycle or undefined tensors ({shown(missing, 5)}); "
                "re-export it (gdws_export/lowering)"
            )
        pending = blocked
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def require_calibration(calibration: CalibrationData | None) -> None:
    """Raise InvalidInputError when INT8 is asked for without calibration data."""
    if calibration is None:
        raise InvalidInputError(
            "int8 needs calibration data: pass calibration= an array of N representative inputs, "
            "a {input name: array} dict, or a .npy/.npz file"
        )


def load_calibration(
    calibration: CalibrationData | None, model: onnx.ModelProto
) -> dict[str, np.ndarray]:
    """Calibration inputs as {graph input name: float32 array of N samples}.

    Args:
        calibration: an array of N inputs (single-input models), a {input name: array} mapping,
            or the path of a .npy (one array) or .npz (one array per input name) file.
        model: the model the samples are for.
    """
    require_calibration(calibration)
    names = _input_names(model)
    if isinstance(calibration, (str, os.PathLike)):
        calibration = _load_array_file(Path(calibration), names)
    if isinstance(calibration, np.ndarray):
        if len(names) != 1:
            raise InvalidInputError(
                f"the model has {len(names)} inputs {names}: "
                "pass calibration as a {name: array} dict"
            )
        calibration = {names[0]: calibration}
    if not isinstance(calibration, Mapping) or sorted(calibration) != sorted(names):
        got = (
            sorted(calibration) if isinstance(calibration, Mapping) else type(calibration).__name__
        )
        raise InvalidInputError(f"calibration data must cover the model inputs {names}, got {got}")
    ranks = _input_ranks(model)
    feeds = {}
    for name in names:
        array = np.asarray(calibration[name], dtype=np.float32)
        if array.ndim != ranks[name] or len(array) == 0:
            raise InvalidInputError(
                f"calibration data for {name!r} has shape {array.shape}; the model wants a "
                f"non-empty batch of rank {ranks[name]}"
            )
        feeds[name] = array
    if len({len(a) for a in feeds.values()}) > 1:
        raise InvalidInputError("calibration arrays must hold the same number of samples")
    return feeds


@dataclass
class QuantizedGraph:
    """What `quantize_int8` made: the Q/DQ graph and how (see `to_dict`)."""

    model: onnx.ModelProto
    settings: Int8Settings
    method: str
    samples: int
    preprocessed: bool  # ONNX Runtime's quant_pre_process ran on the float graph
    preprocess_error: str = ""  # why it could not run, when it could not

    def to_dict(self) -> dict[str, Any]:
        """The settings, calibration and pre-processing, for reports (not the model)."""
        return {
            **self.settings.to_dict(),
            "summary": self.settings.summary(),
            "calibration_method": self.method,
            "calibration_samples": self.samples,
            "preprocessed": self.preprocessed,
            "preprocess_error": self.preprocess_error,
        }


def quantize_int8(
    model: onnx.ModelProto | str | os.PathLike,
    calibration: CalibrationData | None,
    *,
    settings: Int8Settings = TENSORRT_INT8,
    method: str = "minmax",
    batch_size: int = 16,
) -> QuantizedGraph:
    """Quantize a float32 graph to an explicitly quantized INT8 Q/DQ graph.

    The float graph first goes through ONNX Runtime's `quant_pre_process` (ORT's own
    optimizations at the basic level, which keep standard ONNX ops, then shape inference), as
    ONNX Runtime advises before static quantization. Weights are quantized per output channel.

    With the default `TENSORRT_INT8` settings the graph is what TensorRT takes: symmetric INT8
    activations (per tensor) and weights, zero points 0, float biases and one Q/DQ pair per
    consumer (TensorRT rejects non-zero zero points and UINT8 or INT32 Q/DQ, and fuses each pair
    into the layer it feeds). ONNX Runtime's CPU kernels want `host_ort_int8_settings()`.

    Args:
        model: the float32 model or its path.
        calibration: representative inputs (see `load_calibration`); a few hundred images
            are typical.
        settings: data types, range and op types (`int8_settings`).
        method: how activation ranges are calibrated: "minmax", "entropy" or "percentile".
        batch_size: samples per calibration run (the model's own batch if that is fixed).

    Example:
        >>> qdq = quantize_int8("model.onnx", images[:256]).model  # doctest: +SKIP
    """
    import onnx

    if method not in CALIBRATION_METHODS:
        raise InvalidInputError(
            f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}"
        )
    source = _at_least_opset(load_onnx(model), 13)  # per-channel DequantizeLinear needs opset 13
    feeds = load_calibration(calibration, source)
    batch = _fixed_batch(source) or batch_size
    with tempfile.TemporaryDirectory(prefix="gdws-qdq-") as tmp:
        output, model_path = Path(tmp) / "model.int8.onnx", Path(tmp) / "model.onnx"
        onnx.save(source, model_path)  # older onnxruntime releases take paths only
        ready, error = _preprocess(model_path, Path(tmp) / "model.pre.onnx")
        try:
            _quantize_static(ready, output, _ArrayReader(feeds, batch), settings, method)
        except Exception as exc:
            raise InvalidInputError(
                f"INT8 calibration failed in onnxruntime.quantization ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); check that the "
                "calibration arrays match the model's input shapes"
            ) from exc
        quantized = onnx.load(output)
    problems = qdq_problems(quantized) if settings.target == "tensorrt" else []
    if not any(n.op_type == "QuantizeLinear" for n in quantized.graph.node):
        ops = list(settings.op_types or ["any op ONNX Runtime quantizes"])
        problems.append(f"no QuantizeLinear node: the graph has none of the ops {ops}")
    if problems:
        raise UnsupportedModelError(
            f"INT8 Q/DQ graph for {settings.target} (gdws_export/runtimes/precision.py) is not "
            "what it takes: " + shown(problems, 5, "; ")
        )
    samples = len(next(iter(feeds.values())))
    return QuantizedGraph(quantized, settings, method, samples, ready != model_path, error)


def preprocess_for_quantization(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """The float graph after ONNX Runtime's `quant_pre_process` (what `quantize_int8` quantizes).

    Raises:
        UnsupportedModelError: the pre-processing failed on this graph.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="gdws-pre-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(_at_least_opset(load_onnx(model), 13), path)
        ready, error = _preprocess(path, Path(tmp) / "model.pre.onnx")
        if error:
            raise UnsupportedModelError(f"quant_pre_process failed: {error}")
        return onnx.load(ready)


def _preprocess(model_path: Path, output: Path) -> tuple[Path, str]:
    """(the pre-processed graph's path, "") or, when it fails, (`model_path`, why).

    ORT recommends it, and warns without it, but quantizes without it too: a graph its
    optimizer or shape inference cannot take is quantized as it is, and the reason recorded.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # Positional: the first parameter was renamed (input_model_path -> input_model).
        # Symbolic shape inference is skipped: it serves transformers, needs sympy (an optional
        # extra of onnxruntime), and ONNX shape inference covers a CNN with a symbolic batch.
        quant_pre_process(model_path, output, skip_symbolic_shape=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return model_path, f"{type(exc).__name__}: {text[0] if text else ''}"
    return output, ""


def _quantize_static(model_path: Path, output: Path, reader, settings: Int8Settings, method: str):
    """ORT's quantize_static with `settings`."""
    from onnxruntime import quantization as ortq

    types = {"uint8": ortq.QuantType.QUInt8, "int8": ortq.QuantType.QInt8}
    methods = {
        "minmax": ortq.CalibrationMethod.MinMax,
        "entropy": ortq.CalibrationMethod.Entropy,
        "percentile": ortq.CalibrationMethod.Percentile,
    }
    extra = {
        "ActivationSymmetric": settings.activation_symmetric,
        "WeightSymmetric": True,
        # A BatchNormalization's scale is rank 1: per channel along axis 0, not ORT's default 1
        # (which fails with a warning per node and falls back to one scale per tensor).
        "QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0},
    }
    if settings.target == "tensorrt":
        # TensorRT has no INT32 DequantizeLinear (float biases) and fuses a Q/DQ pair per layer.
        extra.update({"QuantizeBias": False, "DedicatedQDQPair": True})
    formats = {"qdq": ortq.QuantFormat.QDQ, "qoperator": ortq.QuantFormat.QOperator}
    ortq.quantize_static(
        model_path,
        output,
        reader,
        quant_format=formats[settings.quant_format],
        op_types_to_quantize=None if settings.op_types is None else list(settings.op_types),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=types[settings.activation_type],
        weight_type=types[settings.weight_type],
        calibrate_method=methods[method],
        extra_options=extra,
    )


class _ArrayReader:
    """Feeds calibration arrays to onnxruntime.quantization in batches."""

    def __init__(self, feeds: dict[str, np.ndarray], batch_size: int) -> None:
        count = len(next(iter(feeds.values())))
        self._batches = iter(
            [
                {name: a[i : i + batch_size] for name, a in feeds.items()}
                for i in range(0, count, batch_size)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of ORT's CalibrationDataReader protocol; one pass suffices
        pass


def _input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]


def _input_ranks(model: onnx.ModelProto) -> dict[str, int]:
    return {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input}


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    """The first input's batch size when the graph fixes it, else None."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    return model if current >= opset else version_converter.convert_version(model, opset)


def _load_array_file(path: Path, names: list[str]) -> np.ndarray | dict[str, np.ndarray]:
    if not path.is_file():
        raise InvalidInputError(f"calibration file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InvalidInputError(f"calibration file {path} is not a .npy/.npz file ({exc})") from exc
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    if len(arrays) == 1 and len(names) == 1:
        return next(iter(arrays.values()))
    return arrays
