"""check_trt_support: what TensorRT's ONNX parser would reject, found without TensorRT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gdws_export.errors import InvalidInputError
from gdws_export.runtimes.precision import convert_to_fp16
from gdws_export.runtimes.trt_support import TRT_SUPPORTED_OPS, check_trt_support
from tests._runtime_models import SmallConvNet, export_onnx


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    return export_onnx(SmallConvNet().eval(), tmp_path_factory.mktemp("support") / "net.onnx")


def _model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets)


def _image(name="x", shape=("batch", 3, 8, 8), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_exported_cnn_and_its_fp16_form_pass(net_onnx):
    assert check_trt_support(net_onnx) == []
    assert check_trt_support(convert_to_fp16(net_onnx)) == []


def test_cnn_ops_are_in_the_documented_list():
    for op in ("Conv", "Gemm", "MatMul", "Relu", "MaxPool", "GlobalAveragePool", "Gather",
               "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Resize"):  # fmt: skip
        assert op in TRT_SUPPORTED_OPS
    for op in ("ConvInteger", "QLinearConv", "Unique", "MaxUnpool"):
        assert op not in TRT_SUPPORTED_OPS


def test_unsupported_and_custom_ops_are_named(net_onnx):
    nodes = [
        helper.make_node("QLinearConv", list("abcdefgh"), ["y"], name="qconv"),
        helper.make_node("FusedConv", ["x"], ["z"], name="fused", domain="com.microsoft"),
    ]
    model = _model(nodes, [_image()], [_image("y"), _image("z")], domains=["com.microsoft"])
    problems = check_trt_support(model)
    assert any("qconv" in p and "not supported" in p for p in problems)
    assert any("fused" in p and "com.microsoft" in p for p in problems)


def test_ort_extended_optimizations_would_break_tensorrt(net_onnx, tmp_path):
    # Why build.py saves ONNX Runtime files at level "basic": "extended" saves contrib ops.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "extended.onnx")
    ort.InferenceSession(str(net_onnx), options, providers=["CPUExecutionProvider"])
    problems = check_trt_support(tmp_path / "extended.onnx")
    assert any("com.microsoft" in p for p in problems)


def test_pooling_restrictions():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["a", "idx"], kernel_shape=[2, 2], name="with_idx"),
        helper.make_node(
            "AveragePool", ["x"], ["b"], kernel_shape=[2, 2], dilations=[2, 2], name="dilated"
        ),
        helper.make_node("MaxPool", ["line"], ["c"], kernel_shape=[2], name="one_d"),
    ]
    inputs = [_image(), _image("line", ("batch", 3, 8))]
    outputs = [_image("a"), _image("idx", dtype=TensorProto.INT64), _image("b"), _image("c")]
    problems = check_trt_support(_model(nodes, inputs, outputs, opset=19))
    assert any("with_idx" in p and "Indices" in p for p in problems)
    assert any("dilated" in p and "dilated" in p for p in problems)
    assert any("one_d" in p and "1D" in p for p in problems)


def test_qdq_tensorrt_cannot_take():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    uint8_zero = numpy_helper.from_array(np.array(3, np.uint8), "u8_zero")
    bias32 = numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "u8_zero"], ["q"], name="asym"),
        helper.make_node("DequantizeLinear", ["bias_q", "scale"], ["bias"], name="int32_dq"),
    ]
    outputs = [_image("q", dtype=TensorProto.UINT8), helper.make_tensor_value_info("bias", 1, [4])]
    problems = check_trt_support(
        _model(nodes, [_image()], outputs, initializers=[scale, uint8_zero, bias32])
    )
    assert any("asym" in p and "UINT8" in p for p in problems)
    assert any("asym" in p and "zero point" in p for p in problems)
    assert any("int32_dq" in p and "INT32" in p for p in problems)


def test_non_constant_axes_resize_modes_and_double_weights():
    double = numpy_helper.from_array(np.ones(3, np.float64), "w64")
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="dyn_axes"),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="cubic", name="cubic"),
    ]
    inputs = [
        _image(),
        helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]),
    ]
    outputs = [_image("u", ("batch", 1, 3, 8, 8)), _image("r")]
    problems = check_trt_support(_model(nodes, inputs, outputs, initializers=[double]))
    assert any("dyn_axes" in p and "must be a constant" in p for p in problems)
    assert any("cubic" in p and "resize mode" in p for p in problems)
    assert any("w64" in p and "DOUBLE" in p for p in problems)


def test_only_the_batch_axis_may_be_dynamic():
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    fixed = _model(relu, [_image(shape=(1, 3, 8, 8))], [_image("y", (1, 3, 8, 8))])
    batch = _model(relu, [_image()], [_image("y")])
    spatial = _model(relu, [_image(shape=("n", 3, "h", "w"))], [_image("y", ("n", 3, "h", "w"))])
    assert check_trt_support(fixed) == []
    assert check_trt_support(batch) == []
    (problem,) = check_trt_support(spatial)
    assert "axes [2, 3]" in problem and "batch axis only" in problem


def test_missing_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        check_trt_support(tmp_path / "nothing.onnx")


def test_models_are_accepted_as_protos_or_paths(net_onnx):
    assert check_trt_support(onnx.load(net_onnx)) == check_trt_support(str(net_onnx))
