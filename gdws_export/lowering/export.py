"""torch -> ONNX with `torch.onnx.export`: exporter choice, opset, dynamic or fixed batch.

The dynamo exporter is the default; the legacy TorchScript exporter stays available because
the dynamo one has exported wrong graphs for plain CNNs (pytorch#169178, #166797) and has
silently fixed a batch that was asked to be dynamic (#157621, #149065). This module checks
what it can see in the graph (the batch axis, standard ops only); the outputs are checked by
`parity` on real inputs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import torch
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError

EXPORTERS = ("dynamo", "legacy")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS_NAME = "batch"
DEFAULT_OPSET = 18  # the dynamo exporter's lowest; TensorRT 10.3 (JetPack 6) reads it
# The legacy exporter's lowest opset whose graphs keep weights out of the graph inputs.
LEGACY_MIN_OPSET = 9
# Domains of standard ONNX ops. Anything else is a custom op no plain runtime knows.
STANDARD_DOMAINS = ("", "ai.onnx")


def export_model(
    module: nn.Module,
    example: torch.Tensor,
    *,
    exporter: str = "dynamo",
    opset: int | None = None,
    dynamic_batch: bool = True,
    check_forward: bool = True,
):
    """Export `module` (one image tensor in, one logits tensor out) to an `onnx.ModelProto`.

    Args:
        module: the model; exported in eval mode (its mode is restored afterwards).
        example: an input batch. With `dynamic_batch` and the dynamo exporter, a batch of one
            is doubled (torch.export specializes sizes 0 and 1).
        exporter: "dynamo" (default) or "legacy" (the TorchScript exporter).
        opset: ONNX opset; None means 18.
        dynamic_batch: make the batch axis symbolic ("batch"); False fixes it to
            `example`'s batch size.
        check_forward: run the model once first, for a clear error when it fails.

    Raises:
        UnsupportedModelError: the model fails on `example`, the exporter fails, or the graph
            has non-standard ops or a fixed batch where a dynamic one was asked for.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise InvalidInputError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    opset = check_opset(opset, exporter)
    if dynamic_batch and exporter == "dynamo" and example.shape[0] < 2:
        example = torch.cat([example, example], 0)
    was_training = module.training
    module.eval()
    try:
        if check_forward:
            _check_forward(module, example)
        try:
            with _quiet():
                if exporter == "dynamo":
                    proto = _export_dynamo(module, example, opset, dynamic_batch)
                else:
                    proto = _export_legacy(module, example, opset, dynamic_batch)
        except UnsupportedModelError:
            raise
        except Exception as exc:
            other = "legacy" if exporter == "dynamo" else "dynamo"
            raise UnsupportedModelError(
                f"the {exporter} ONNX exporter failed: {_first_line(exc)}; try exporter={other!r}"
            ) from exc
    finally:
        module.train(was_training)
    check_graph(proto, dynamic_batch=dynamic_batch, exporter=exporter)
    onnx.checker.check_model(proto)
    return proto


def supported_opsets(exporter: str) -> range:
    """The ONNX opsets `exporter` writes as asked and the installed ONNX Runtime loads.

    The dynamo exporter writes opsets from 18 up (below, it silently writes 18 or runs a
    version converter), the legacy one from `LEGACY_MIN_OPSET` up to torch's TorchScript
    exporter maximum; neither may pass what the installed onnx package defines or what
    ONNX Runtime loads.
    """
    import onnx

    if exporter == "legacy":
        from torch.onnx import _constants

        low = LEGACY_MIN_OPSET
        high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    else:
        low, high = DEFAULT_OPSET, onnx.defs.onnx_opset_version()
    return range(low, min(high, _runtime_max_opset()) + 1)


def check_opset(opset, exporter: str) -> int:
    """`opset` (None: DEFAULT_OPSET) if `exporter` and ONNX Runtime support it.

    Raises:
        InvalidInputError: not an integer, or outside `supported_opsets(exporter)`.
    """
    if opset is None:
        return DEFAULT_OPSET
    supported = supported_opsets(exporter)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in supported:
        raise InvalidInputError(
            f"--opset {opset!r} is not supported: the {exporter} exporter with ONNX Runtime "
            f"writes opsets {supported[0]} to {supported[-1]}"
        )
    return opset


def default_opset(model) -> int | None:
    """The default-domain (ai.onnx) opset an ONNX model or file imports; None if it has none."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)


@functools.cache
def _runtime_max_opset() -> int:
    """The newest default-domain opset the installed ONNX Runtime loads (probed once, ~ms)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the probe's failures are expected
    for opset in range(onnx.defs.onnx_opset_version(), DEFAULT_OPSET - 1, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
        except Exception:  # too new for this ONNX Runtime: try the one below
            continue
        return opset
    return DEFAULT_OPSET


def _check_forward(module: nn.Module, example: torch.Tensor) -> None:
    with torch.no_grad():
        try:
            out = module(example)
        except Exception as exc:
            raise UnsupportedModelError(
                f"the model fails on an input of shape {tuple(example.shape)}: "
                f"{_first_line(exc)}; check input_shape"
            ) from exc
    if not isinstance(out, torch.Tensor):
        raise UnsupportedModelError(
            f"the model returns {type(out).__name__}, expected one logits tensor"
        )


def _export_dynamo(module, example, opset, dynamic_batch):
    dynamic_shapes = ({0: torch.export.Dim(BATCH_AXIS_NAME)},) if dynamic_batch else None
    program = torch.onnx.export(
        module, (example,), None, dynamo=True, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes, verbose=False,
    )  # fmt: skip
    proto = program.model_proto
    if dynamic_batch:  # the dynamo exporter names the axis itself; use one name everywhere
        for value in (*proto.graph.input, *proto.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            if dim.HasField("dim_param"):
                dim.dim_param = BATCH_AXIS_NAME
    return proto


def _export_legacy(module, example, opset, dynamic_batch):
    import onnx

    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: BATCH_AXIS_NAME}, OUTPUT_NAME: {0: BATCH_AXIS_NAME}}
    torch.onnx.export(
        module, (example,), buffer, dynamo=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes=axes if dynamic_batch else None, do_constant_folding=True,
    )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def check_graph(proto, *, dynamic_batch: bool, exporter: str = "") -> None:
    """Check a graph has one input and one output with our names, only standard ops, and
    the batch axis asked for.

    Raises:
        UnsupportedModelError: naming what is wrong.
    """
    graph = proto.graph
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise UnsupportedModelError(
            f"exported graph has inputs/outputs {names}, expected one image input and one "
            "logits output"
        )
    custom = {f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in STANDARD_DOMAINS}
    custom = sorted(custom)
    if custom or len(proto.functions):
        found = ", ".join(custom or [f.name for f in proto.functions])
        raise UnsupportedModelError(
            f"exported graph uses non-standard ops or functions ({found}); "
            "only standard ONNX ops are allowed"
        )
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        if dynamic_batch and not dim.HasField("dim_param"):
            hint = " (a known dynamo exporter bug; try exporter='legacy')" if exporter else ""
            raise UnsupportedModelError(
                f"the batch axis of {value.name!r} was fixed to {dim.dim_value} although a "
                f"dynamic batch was asked for{hint}"
            )


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and progress prints (they go to stdout)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


__all__ = [
    "BATCH_AXIS_NAME",
    "DEFAULT_OPSET",
    "EXPORTERS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "check_graph",
    "export_model",
]
