"""ONNX operators in PyTorch, for `fake_quant.FakeQuantTwin`: the ops of exported CNN graphs.

Each function takes the node's inputs (None for an omitted optional input) and its attributes
(ONNX names, plain Python values) and returns the output tensor. They follow the ONNX operator
specification at opset 13 and later; the Q/DQ pair is in `fake_quant`, which owns the rounding.
An op that is not here, or an attribute value these do not cover (asymmetric average-pool
padding, say), raises UnsupportedModelError naming it: the twin must compute the graph's
function exactly or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gdws_export.errors import UnsupportedModelError

Tensor = torch.Tensor
Inputs = Sequence[Tensor | None]
Attrs = dict[str, Any]
OpFunction = Callable[[Inputs, Attrs], Tensor]

# onnx.TensorProto data types -> torch dtypes (the ones a CNN graph's Cast can name).
ONNX_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}  # fmt: skip

OPS: dict[str, OpFunction] = {}


def _op(*names: str) -> Callable[[OpFunction], OpFunction]:
    def register(function: OpFunction) -> OpFunction:
        for name in names:
            OPS[name] = function
        return function

    return register


def unsupported(what: str) -> UnsupportedModelError:
    """The error for a graph the twin cannot compute exactly."""
    return UnsupportedModelError(
        f"the fake-quantized twin (gdws_export/runtimes/onnx_ops.py) does not implement {what}; "
        "evaluate this engine by replay of the float model's attacks instead"
    )


def _spatial_pads(attrs: Attrs, x: Tensor, kernel: Sequence[int]) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial dims, `auto_pad` resolved."""
    dims = len(kernel)
    strides = attrs.get("strides", [1] * dims)
    dilations = attrs.get("dilations", [1] * dims)
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * dims)))
    if mode == "VALID":
        return [0] * (2 * dims)
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning.
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def _padded(x: Tensor, pads: Sequence[int], value: float) -> tuple[Tensor, list[int]]:
    """(x, symmetric padding for torch) with any asymmetric part padded explicitly."""
    dims = len(pads) // 2
    begins, ends = list(pads[:dims]), list(pads[dims:])
    if begins == ends:
        return x, begins
    explicit = []
    for begin, end in reversed(list(zip(begins, ends, strict=True))):  # F.pad: last dim first
        explicit += [begin, end]
    return F.pad(x, explicit, value=value), [0] * dims


@_op("Conv")
def conv(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    dims = x.dim() - 2
    if not 1 <= dims <= 3:
        raise unsupported(f"Conv on {x.dim()}-d inputs")
    x, padding = _padded(x, _spatial_pads(attrs, x, weight.shape[2:]), 0.0)
    function = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return function(
        x, weight, bias, attrs.get("strides", [1] * dims), padding,
        attrs.get("dilations", [1] * dims), attrs.get("group", 1),
    )  # fmt: skip


@_op("MaxPool")
def max_pool(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, kernel = inputs[0], attrs["kernel_shape"]
    dims = len(kernel)
    if attrs.get("storage_order", 0):
        raise unsupported("MaxPool with storage_order 1")
    x, padding = _padded(x, _spatial_pads(attrs, x, kernel), -math.inf)
    function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    return function(
        x, kernel, attrs.get("strides", [1] * dims), padding,
        attrs.get("dilations", [1] * dims), bool(attrs.get("ceil_mode", 0)),
    )  # fmt: skip


@_op("AveragePool")
def average_pool(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, kernel = inputs[0], attrs["kernel_shape"]
    dims = len(kernel)
    pads = _spatial_pads(attrs, x, kernel)
    if pads[:dims] != pads[dims:] or any(d != 1 for d in attrs.get("dilations", [1] * dims)):
        raise unsupported("AveragePool with asymmetric padding or dilation")
    function = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    return function(
        x, kernel, attrs.get("strides", [1] * dims), pads[:dims],
        bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0)),
    )  # fmt: skip


@_op("GlobalAveragePool")
def global_average_pool(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("GlobalMaxPool")
def global_max_pool(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("Gemm")
def gemm(inputs: Inputs, attrs: Attrs) -> Tensor:
    a, b = inputs[0], inputs[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    c = inputs[2] if len(inputs) > 2 else None
    return y if c is None else y + attrs.get("beta", 1.0) * c


@_op("MatMul")
def matmul(inputs: Inputs, attrs: Attrs) -> Tensor:
    return torch.matmul(inputs[0], inputs[1])


@_op("BatchNormalization")
def batch_norm(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, scale, bias, mean, var = inputs[:5]
    if attrs.get("training_mode", 0):
        raise unsupported("BatchNormalization in training mode")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))


def _elementwise(name: str) -> OpFunction:
    def function(inputs: Inputs, attrs: Attrs) -> Tensor:
        a, b = inputs[0], inputs[1]
        if name == "Div" and not a.is_floating_point() and not b.is_floating_point():
            return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
                "Pow": torch.pow}[name](a, b)  # fmt: skip

    return function


for _name in ("Add", "Sub", "Mul", "Div", "Pow"):
    OPS[_name] = _elementwise(_name)

_UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Abs": torch.abs, "Identity": lambda x: x,
}  # fmt: skip
for _name, _function in _UNARY.items():
    OPS[_name] = lambda inputs, attrs, f=_function: f(inputs[0])


@_op("Dropout")
def dropout(inputs: Inputs, attrs: Attrs) -> Tensor:
    return inputs[0]  # inference: the identity (an exported eval-mode graph)


@_op("LeakyRelu")
def leaky_relu(inputs: Inputs, attrs: Attrs) -> Tensor:
    return F.leaky_relu(inputs[0], attrs.get("alpha", 0.01))


@_op("Clip")
def clip(inputs: Inputs, attrs: Attrs) -> Tensor:
    low = inputs[1] if len(inputs) > 1 else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 else attrs.get("max")
    return torch.clamp(inputs[0], low, high)


@_op("Softmax")
def softmax(inputs: Inputs, attrs: Attrs) -> Tensor:
    return torch.softmax(inputs[0], dim=attrs.get("axis", -1))


@_op("Flatten")
def flatten(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


@_op("Reshape")
def reshape(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, shape = inputs[0], [int(v) for v in inputs[1].tolist()]
    if not attrs.get("allowzero", 0):  # 0 copies the input's dimension
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


@_op("Shape")
def shape(inputs: Inputs, attrs: Attrs) -> Tensor:
    dims = list(inputs[0].shape)[attrs.get("start", 0) : attrs.get("end")]
    return torch.tensor(dims, dtype=torch.int64)


@_op("Gather")
def gather(inputs: Inputs, attrs: Attrs) -> Tensor:
    data, indices = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0) % data.dim()
    flat = torch.where(indices < 0, indices + data.shape[axis], indices).reshape(-1)
    picked = torch.index_select(data, axis, flat.to(data.device))
    return picked.reshape(*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :])


def _axes(inputs: Inputs, attrs: Attrs) -> list[int] | None:
    """Axes from input 1 (opset 13+) or the attribute (older opsets)."""
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1].tolist()]
    return attrs.get("axes")


@_op("Unsqueeze")
def unsqueeze(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    rank = x.dim() + len(_axes(inputs, attrs))
    for axis in sorted(a % rank for a in _axes(inputs, attrs)):
        x = x.unsqueeze(axis)
    return x


@_op("Squeeze")
def squeeze(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, axes = inputs[0], _axes(inputs, attrs)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


@_op("Concat")
def concat(inputs: Inputs, attrs: Attrs) -> Tensor:
    return torch.cat([t for t in inputs if t is not None], dim=attrs["axis"])


@_op("Transpose")
def transpose(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    return x.permute(attrs.get("perm", list(reversed(range(x.dim())))))


@_op("Cast")
def cast(inputs: Inputs, attrs: Attrs) -> Tensor:
    if attrs["to"] not in ONNX_DTYPES:
        raise unsupported(f"Cast to ONNX data type {attrs['to']}")
    return inputs[0].to(ONNX_DTYPES[attrs["to"]])


@_op("ReduceMean")
def reduce_mean(inputs: Inputs, attrs: Attrs) -> Tensor:
    x, axes = inputs[0], _axes(inputs, attrs)
    dims = tuple(range(x.dim())) if not axes else tuple(axes)
    return x.mean(dim=dims, keepdim=bool(attrs.get("keepdims", 1)))


@_op("Slice")
def slice_(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    starts, ends = inputs[1].tolist(), inputs[2].tolist()
    axes = inputs[3].tolist() if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = inputs[4].tolist() if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step < 1:
            raise unsupported("Slice with a negative step")
        index[axis % x.dim()] = slice(start, end, step)  # Python clamps as ONNX does
    return x[tuple(index)]


@_op("Pad")
def pad(inputs: Inputs, attrs: Attrs) -> Tensor:
    x = inputs[0]
    pads = [int(p) for p in (inputs[1].tolist() if len(inputs) > 1 else attrs["pads"])]
    value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("value", 0.0)
    if len(inputs) > 3 and inputs[3] is not None:
        raise unsupported("Pad with an axes input")
    rank = x.dim()
    explicit = []
    for axis in reversed(range(rank)):
        explicit += [pads[axis], pads[axis + rank]]
    mode = attrs.get("mode", "constant")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
    if mode not in modes:
        raise unsupported(f"Pad mode {mode!r}")
    if mode != "constant":  # torch pads only the spatial dims in these modes
        return F.pad(x, explicit[: 2 * (rank - 2)], mode=modes[mode])
    return F.pad(x, explicit, mode="constant", value=float(value))
