"""What TensorRT's ONNX parser would reject in a graph, checked without TensorRT.

The op list and restrictions are those documented in onnx-tensorrt's docs/operators.md
(TensorRT 10.1); newer releases add ops, so an op reported here may parse on a newer TensorRT.
TensorRT 10 supports INT64 natively, so INT64 weights are not reported (TensorRT 8 cast them).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# Operators documented as supported ("Y") in onnx-tensorrt docs/operators.md, TensorRT 10.1.
TRT_SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
    MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor
    """.split()
)
TRT_MIN_OPSET = 9

# op type -> index of an input that TensorRT needs as a constant ("`axes` must be an initializer")
_CONSTANT_INPUTS = {
    "Pad": 3,
    "ReduceMean": 1,
    "Slice": 3,
    "Squeeze": 1,
    "Unsqueeze": 1,
    "CumSum": 1,
}

# onnx.TensorProto data types, by number so this module needs no onnx import to load
_UINT8, _INT8, _INT32, _DOUBLE = 2, 3, 6, 11
_TYPE_NAMES = {
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    10: "FLOAT16",
    11: "DOUBLE",
}


def check_trt_support(model: onnx.ModelProto | str | os.PathLike) -> list[str]:
    """List what TensorRT's ONNX parser would reject or change in `model`; empty if nothing.

    Checks the documented op list, op restrictions (2D/3D pooling, no dilated pooling, no
    MaxPool indices, constant `axes`, Resize modes), Q/DQ rules (INT8, zero points 0), DOUBLE
    tensors (cast down to FLOAT), UINT8 tensors other than graph I/O, and input shapes: the
    engine builder makes an optimization profile over the batch axis only, so any other
    dynamic axis is a problem.

    Example:
        >>> for problem in check_trt_support("model.onnx"):  # doctest: +SKIP
        ...     print(problem)
    """
    from gdws_export.runtimes.onnx_files import load_onnx

    model = load_onnx(model, check=False)
    graph = model.graph
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < TRT_MIN_OPSET:
        problems.append(f"opset {opset} is below {TRT_MIN_OPSET}, the oldest TensorRT parses")
    constants = {t.name for t in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    for index, node in enumerate(graph.node):
        label = f"node {node.name or '#' + str(index)} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(
                f"{label}: custom-domain op {node.domain}, not in TensorRT's ONNX parser "
                "(would need a plugin; save ONNX Runtime-optimized graphs at level 'basic')"
            )
        elif node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{label}: not supported by TensorRT's ONNX parser")
        else:
            problems.extend(f"{label}: {p}" for p in _restrictions(node, constants))
    problems.extend(qdq_problems(model))
    problems.extend(_type_problems(graph))
    problems.extend(_shape_problems(graph))
    return problems


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes TensorRT rejects: non-INT8 quantized types, non-zero zero points.

    TensorRT quantizes symmetrically, to INT8 (also FP8/INT4, not produced here); UINT8 Q/DQ
    (ONNX Runtime's asymmetric default) and INT32 DequantizeLinear (quantized biases) fail.
    """
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    problems = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"node {node.name or '#' + str(index)} ({node.op_type})"
        quantized = node.input[0] if node.op_type == "DequantizeLinear" else None
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        for name in (quantized, zero_point):
            tensor = initializers.get(name) if name else None
            if tensor is not None and tensor.data_type != _INT8:
                kind = _TYPE_NAMES.get(tensor.data_type, str(tensor.data_type))
                problems.append(f"{label}: {name} is {kind}; TensorRT quantizes to INT8 only")
        tensor = initializers.get(zero_point) if zero_point else None
        if tensor is not None and numpy_helper.to_array(tensor).any():
            problems.append(f"{label}: zero point {zero_point} is not 0 (TensorRT is symmetric)")
    return problems


def _restrictions(node: onnx.NodeProto, constants: set[str]) -> list[str]:
    """Restrictions from operators.md for the ops CNNs use."""
    attrs = {a.name: a for a in node.attribute}
    problems = []
    if node.op_type in ("MaxPool", "AveragePool"):
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
        if len(kernel) not in (2, 3):
            problems.append(f"{len(kernel)}D pooling; TensorRT pools in 2D or 3D only")
        if "dilations" in attrs and any(d != 1 for d in attrs["dilations"].ints):
            problems.append("dilated pooling is not supported")
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append("the Indices output is not supported")
    index = _CONSTANT_INPUTS.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index]:
        if node.input[index] not in constants:
            problems.append(f"input {index} ({node.input[index]}) must be a constant")
    if node.op_type == "Resize":
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        if mode not in ("nearest", "linear"):
            problems.append(f"resize mode {mode!r} (only nearest and linear)")
        if "antialias" in attrs and attrs["antialias"].i:
            problems.append("antialiasing is not supported")
        transform = (
            attrs["coordinate_transformation_mode"].s.decode()
            if "coordinate_transformation_mode" in attrs
            else "half_pixel"
        )
        if transform not in (
            "half_pixel",
            "pytorch_half_pixel",
            "tf_half_pixel_for_nn",
            "asymmetric",
            "align_corners",
        ):
            problems.append(f"coordinate_transformation_mode {transform!r} is not supported")
    return problems


def _type_problems(graph: onnx.GraphProto) -> list[str]:
    io_names = {v.name for v in [*graph.input, *graph.output]}
    problems = []
    for tensor in graph.initializer:
        if tensor.data_type == _DOUBLE:
            problems.append(
                f"initializer {tensor.name} is DOUBLE; TensorRT casts it to FLOAT, clamping"
            )
        elif tensor.data_type == _UINT8:
            problems.append(
                f"initializer {tensor.name} is UINT8; TensorRT takes UINT8 only as graph I/O"
            )
    for value in [*graph.input, *graph.output, *graph.value_info]:
        dtype = value.type.tensor_type.elem_type
        if dtype == _DOUBLE:
            problems.append(f"tensor {value.name} is DOUBLE; TensorRT casts it to FLOAT, clamping")
        elif dtype == _UINT8 and value.name not in io_names:
            problems.append(f"tensor {value.name} is UINT8; TensorRT takes UINT8 only as graph I/O")
    return problems


def _shape_problems(graph: onnx.GraphProto) -> list[str]:
    initializers = {t.name for t in graph.initializer}
    problems = []
    for value in graph.input:
        if value.name in initializers:
            continue
        if not value.type.tensor_type.HasField("shape"):
            problems.append(f"input {value.name} has no shape; export it with a fixed rank")
            continue
        dynamic = [
            axis
            for axis, dim in enumerate(value.type.tensor_type.shape.dim)
            if axis > 0 and not dim.HasField("dim_value")
        ]
        if dynamic:
            problems.append(
                f"input {value.name} is dynamic on axes {dynamic}; the engine's optimization "
                "profile covers the batch axis only, so export with a fixed image size"
            )
    return problems
