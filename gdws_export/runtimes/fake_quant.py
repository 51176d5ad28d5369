"""A fake-quantized PyTorch twin of an INT8 Q/DQ graph, so white-box attacks reach INT8 engines.

An INT8 engine (ONNX Runtime or TensorRT) runs the Q/DQ graph that `precision.quantize_int8`
made: each quantized tensor passes QuantizeLinear, q = clamp(round(x / s) + z, qmin, qmax),
then DequantizeLinear, (q - z) * s, around float ops. The engine fuses these into integer
kernels; the twin computes the same graph in float32 PyTorch, node by node, from the graph's
own scales and zero points (per-channel weights, per-tensor activations): no name matching
with the float PyTorch model is needed, and what the engine's graph pre-processing folded (the
BatchNorms, the ReLUs absorbed into uint8 ranges) is folded in the twin too.

Gradients: `round` is straight-through (forward rounds, backward is the identity), so PGD
follows the gradient of the network with quantized weights; the clamp keeps its own gradient,
zero outside [qmin, qmax], because in a graph made for uint8 activations that clamp is the
ReLU (ONNX Runtime removes ReLUs whose output range starts at zero point 0).

Agreement with the engine is close, not bit-exact: the engine requantizes int32 sums with its
own arithmetic, and a value near a rounding boundary may land one step apart, which later
layers carry along (tests/test_fake_quant.py measures it on a bundled checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError, shown
from gdws_export.runtimes.onnx_files import load_onnx
from gdws_export.runtimes.onnx_ops import ONNX_DTYPES, OPS, unsupported

if TYPE_CHECKING:
    import onnx

_QUANTIZE, _DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
_INTEGER_RANGES = {
    torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
}  # fmt: skip
_DEFAULT_DOMAINS = ("", "ai.onnx")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, the identity in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, bounds: tuple
) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear in float: the value the engine's int8 tensor holds.

    Rounds half to even, as ONNX's QuantizeLinear does (`torch.round` does too).
    """
    return dequantize(quantize(x, scale, zero_point, axis, bounds), scale, zero_point, axis)


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, bounds: tuple
) -> torch.Tensor:
    """ONNX QuantizeLinear with a straight-through round; the integers are kept as floats so
    gradients flow."""
    scale, zero = _along(scale, axis, x.dim()), _along(zero_point, axis, x.dim())
    return torch.clamp(round_ste(x / scale) + zero.to(x.dtype), bounds[0], bounds[1])


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int
) -> torch.Tensor:
    """ONNX DequantizeLinear: (q - zero_point) * scale, per tensor or along `axis`."""
    scale, zero = _along(scale, axis, q.dim()), _along(zero_point, axis, q.dim())
    return (q.to(scale.dtype) - zero.to(scale.dtype)) * scale


def _along(values: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast along `axis` (per channel) or as a scalar."""
    if values.dim() == 0 or rank == 0:
        return values
    shape = [1] * rank
    shape[axis % rank] = -1
    return values.reshape(shape)


class FakeQuantTwin(nn.Module):
    """The function of an ONNX Q/DQ graph as an nn.Module, differentiable in its inputs.

    Built by `fake_quant_twin`; takes the graph's inputs positionally and returns its output
    (a tuple when the graph has several). The graph's constants (weights already dequantized
    once, scales, zero points) are buffers, so `.to(device)` moves them.

    Attributes:
        input_names, output_names: the graph's.
        source: the file it was read from ("" for a ModelProto).
        quantized_activations: QuantizeLinear nodes on computed tensors (weights excluded).
    """

    def __init__(
        self,
        nodes: list[tuple[str, list[str], list[str], dict[str, Any]]],
        constants: dict[str, torch.Tensor],
        input_names: list[str],
        output_names: list[str],
        source: str = "",
    ) -> None:
        super().__init__()
        self._nodes = nodes
        self._constants: dict[str, str] = {}
        for index, (name, value) in enumerate(constants.items()):
            self._constants[name] = f"constant_{index}"
            self.register_buffer(f"constant_{index}", value)
        self.input_names, self.output_names, self.source = input_names, output_names, source
        self.quantized_activations = sum(op == _QUANTIZE for op, *_ in nodes)
        self.eval()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise InvalidInputError(
                f"the twin of {self.source or 'the graph'} takes {len(self.input_names)} "
                f"input(s) {self.input_names}, got {len(inputs)}"
            )
        values: dict[str, torch.Tensor] = {
            name: getattr(self, attr) for name, attr in self._constants.items()
        }
        values.update(zip(self.input_names, inputs, strict=True))
        for op, names, outputs, attrs in self._nodes:
            values[outputs[0]] = _run_node(op, [values[n] if n else None for n in names], attrs)
        results = tuple(values[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def extra_repr(self) -> str:
        return (
            f"source={self.source or '<ModelProto>'!r}, nodes={len(self._nodes)}, "
            f"quantized_activations={self.quantized_activations}"
        )


def _run_node(op: str, inputs: list[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    if op == _QUANTIZE:
        return quantize(inputs[0], inputs[1], inputs[2], attrs.get("axis", 1), attrs["bounds"])
    if op == _DEQUANTIZE:
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else torch.zeros(())
        return dequantize(inputs[0], inputs[1], zero, attrs.get("axis", 1))
    return OPS[op](inputs, attrs)


def fake_quant_twin(
    model: onnx.ModelProto | str | os.PathLike, *, require_quantized: bool = True
) -> FakeQuantTwin:
    """The fake-quantized PyTorch twin of an INT8 Q/DQ ONNX graph (see the module doc).

    Args:
        model: the Q/DQ graph or its path: an ONNX Runtime INT8 model (`*.int8.ort.onnx`) or
            the graph a TensorRT INT8 engine was parsed from (its EngineInfo's `onnx_path`).
        require_quantized: refuse a graph without QuantizeLinear nodes (False: any graph of
            supported ops, computed in float).

    Raises:
        UnsupportedModelError: an op or attribute the twin does not implement, named.

    Example:
        >>> twin = fake_quant_twin("gdws.int8.ort.onnx")  # doctest: +SKIP
        >>> x_adv = pgd(twin, x, y, eps=0.1)  # doctest: +SKIP
    """
    from onnx import helper, numpy_helper

    proto = load_onnx(model)
    source = "" if not isinstance(model, (str, os.PathLike)) else os.fspath(model)
    graph = proto.graph
    constants = {t.name: _tensor(numpy_helper.to_array(t)) for t in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in constants]
    nodes, problems = [], []
    for node in graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{node.op_type} of domain {node.domain}")
            continue
        attrs = {a.name: _attribute(helper.get_attribute_value(a)) for a in node.attribute}
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant(attrs)
            continue
        if node.op_type not in (*OPS, _QUANTIZE, _DEQUANTIZE):
            problems.append(node.op_type)
            continue
        if node.op_type == _QUANTIZE:
            attrs["bounds"] = _bounds(node, constants, attrs)
        nodes.append((node.op_type, list(node.input), list(node.output), attrs))
    if problems:
        raise unsupported(f"the ops {shown(sorted(set(problems)), 8)} of {source or 'the graph'}")
    if require_quantized and not any(op == _QUANTIZE for op, *_ in nodes):
        raise InvalidInputError(
            f"{source or 'the graph'} has no QuantizeLinear node: not an INT8 Q/DQ graph; "
            "build it with precision 'int8'"
        )
    nodes = _fold_constants(nodes, constants, inputs)
    used = {name for _, names, _, _ in nodes for name in names} | {v.name for v in graph.output}
    kept = {name: value for name, value in constants.items() if name in used}
    return FakeQuantTwin(nodes, kept, inputs, [v.name for v in graph.output], source)


def _fold_constants(nodes: list, constants: dict[str, torch.Tensor], inputs: list[str]) -> list:
    """Run, once, the nodes that read constants only (weight and bias DequantizeLinear, shape
    arithmetic); their outputs become constants. Checks that every input is defined."""
    known = set(constants) | set(inputs) | {""}
    remaining = []
    for op, names, outputs, attrs in nodes:
        missing = [name for name in names if name not in known]
        if missing:
            raise UnsupportedModelError(
                f"the twin's graph reads {shown(missing, 3)} before any node makes it; "
                "sort the graph (precision.topological_sort) or re-export it"
            )
        known.update(outputs[:1])
        if all(name in constants or not name for name in names):
            with torch.no_grad():
                constants[outputs[0]] = _run_node(
                    op, [constants[n] if n else None for n in names], attrs
                )
        else:
            remaining.append((op, names, outputs, attrs))
    return remaining


def _bounds(node, constants: dict[str, torch.Tensor], attrs: dict[str, Any]) -> tuple[int, int]:
    """[qmin, qmax] of a QuantizeLinear: its zero point's integer type (uint8 when absent)."""
    if attrs.get("block_size", 0):
        raise unsupported("blocked QuantizeLinear (block_size)")
    if len(node.input) < 3 or not node.input[2]:
        dtype = ONNX_DTYPES.get(attrs.get("output_dtype", 2), torch.uint8)
    elif node.input[2] in constants:
        dtype = constants[node.input[2]].dtype
    else:
        raise unsupported(f"QuantizeLinear {node.name} with a computed zero point")
    if dtype not in _INTEGER_RANGES:
        raise unsupported(f"QuantizeLinear {node.name} to {dtype}")
    return _INTEGER_RANGES[dtype]


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array))  # a writable copy: ONNX's arrays may be read-only


def _attribute(value: Any) -> Any:
    """An attribute value as plain Python (strings decoded) or a tensor."""
    from onnx import TensorProto, numpy_helper

    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, TensorProto):
        return _tensor(numpy_helper.to_array(value))
    return value


def _constant(attrs: dict[str, Any]) -> torch.Tensor:
    """The value of a Constant node."""
    if "value" in attrs:
        return attrs["value"]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):  # fmt: skip
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise unsupported(f"a Constant with {sorted(attrs)}")


def engine_qdq_graph(
    target: str, engine_path: str | os.PathLike, settings_path: str | os.PathLike
) -> Path:
    """The Q/DQ graph an INT8 build runs: ONNX Runtime's model file, or the graph a TensorRT
    engine was parsed from (its EngineInfo's `onnx_path`).

    Raises:
        InvalidInputError: the build is not INT8, or its target has no Q/DQ graph ("torch").
    """
    if target == "ort":
        from gdws_export.runtimes.onnxruntime import OrtSettings

        settings = OrtSettings.load(settings_path)
        precision, graph = settings.precision, Path(settings.model)
    elif target == "trt":
        from gdws_export.runtimes.tensorrt import EngineInfo

        info = EngineInfo.load(settings_path)
        precision, graph = info.precision, Path(info.onnx_path)
        if not graph.is_absolute():  # relocated builds store it relative to their folder
            graph = Path(settings_path).parent / graph
    else:
        raise InvalidInputError(f"target {target!r} has no INT8 Q/DQ graph; INT8 is ort or trt")
    if precision != "int8":
        raise InvalidInputError(
            f"{engine_path} is a {precision} build: a fake-quantized twin is for INT8 builds"
        )
    return graph


def twin_of_engine(
    target: str, engine_path: str | os.PathLike, settings_path: str | os.PathLike
) -> FakeQuantTwin:
    """`fake_quant_twin` of the Q/DQ graph behind a built INT8 engine (`engine_qdq_graph`).

    Example:
        >>> twin = twin_of_engine("ort", "m.int8.ort.onnx", "m.int8.ort.json")  # doctest: +SKIP
    """
    return fake_quant_twin(engine_qdq_graph(target, engine_path, settings_path))


__all__ = [
    "FakeQuantTwin",
    "dequantize",
    "engine_qdq_graph",
    "fake_quant_twin",
    "fake_quantize",
    "quantize",
    "round_ste",
    "twin_of_engine",
]
