"""FP16 conversion and INT8 Q/DQ quantization of ONNX graphs, checked on ONNX Runtime CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.runtimes.int8_settings import ort_int8_settings
from gdws_export.runtimes.onnxruntime import OrtRunner
from gdws_export.runtimes.precision import (
    convert_to_fp16,
    load_calibration,
    quantize_int8,
    topological_sort,
)
from gdws_export.runtimes.trt_support import check_trt_support, qdq_problems
from tests._runtime_models import (
    export_onnx,
    mean_relative_error,
    relative_error,
    stripes,
    torch_logits,
    trained_net,
)


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    return export_onnx(trained_net(), tmp_path_factory.mktemp("precision") / "net.onnx")


@pytest.fixture(scope="module")
def test_set():
    return stripes(128, seed=2)


@pytest.fixture(scope="module")
def qdq_model(net_onnx):
    return quantize_int8(net_onnx, stripes(64, seed=3)[0]).model


def _run(model: onnx.ModelProto, images: np.ndarray, level: str = "all") -> np.ndarray:
    with OrtRunner(model.SerializeToString(), threads=1, optimization_level=level) as runner:
        return runner.predict(images)


def _weight_types(model: onnx.ModelProto, op_types=("Conv", "Gemm")) -> dict[str, int]:
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    return {
        node.input[1]: initializers[node.input[1]]
        for node in model.graph.node
        if node.op_type in op_types and node.input[1] in initializers
    }


def test_fp16_keeps_float32_io_and_matches_fp32(net_onnx, test_set):
    images, _ = test_set
    fp16 = convert_to_fp16(net_onnx)
    onnx.checker.check_model(fp16, full_check=True)
    weights = _weight_types(fp16)
    assert len(weights) == 4  # three convs and the classifier
    assert set(weights.values()) == {TensorProto.FLOAT16}
    assert [v.type.tensor_type.elem_type for v in [*fp16.graph.input, *fp16.graph.output]] == [
        TensorProto.FLOAT,
        TensorProto.FLOAT,
    ]
    reference = torch_logits(trained_net(), images)
    logits = _run(fp16, images)
    assert logits.dtype == np.float32
    assert relative_error(logits, reference) < 1e-2
    assert relative_error(logits, reference) > 1e-6  # it really computed in half precision


def test_fp16_can_convert_io_too(net_onnx, test_set):
    fp16 = convert_to_fp16(net_onnx, keep_io_types=False)
    assert [v.type.tensor_type.elem_type for v in [*fp16.graph.input, *fp16.graph.output]] == [
        TensorProto.FLOAT16,
        TensorProto.FLOAT16,
    ]
    images = test_set[0][:8]
    logits = _run(fp16, images)  # predict casts the input to the graph's float16
    assert logits.dtype == np.float16
    reference = torch_logits(trained_net(), images)
    assert relative_error(logits.astype(np.float32), reference) < 1e-2


def test_fp16_leaves_its_argument_unchanged(net_onnx):
    source = onnx.load(net_onnx)
    before = source.SerializeToString()
    convert_to_fp16(source)
    assert source.SerializeToString() == before


def test_topological_sort_orders_producers_first():
    nodes = [
        helper.make_node("Relu", ["b"], ["c"], name="second"),
        helper.make_node("Neg", ["a"], ["b"], name="first"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["first", "second"]
    onnx.checker.check_model(helper.make_model(graph))
    graph.node.append(helper.make_node("Relu", ["missing"], ["d"], name="orphan"))
    with pytest.raises(UnsupportedModelError, match="missing"):
        topological_sort(graph)
    for i in range(6):  # a list cut for the message says so
        graph.node.append(helper.make_node("Relu", [f"missing{i}"], [f"e{i}"], name=f"o{i}"))
    with pytest.raises(UnsupportedModelError, match=r"missing3, \.\.\. \(7 in all\)\)"):
        topological_sort(graph)


def test_qdq_graph_is_what_tensorrt_takes(net_onnx, qdq_model):
    ops = [n.op_type for n in qdq_model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    onnx.checker.check_model(qdq_model, full_check=True)
    assert qdq_problems(qdq_model) == []
    assert check_trt_support(qdq_model) == []
    initializers = {t.name: t for t in qdq_model.graph.initializer}
    # Every conv / classifier weight arrives through a DequantizeLinear of an INT8 tensor,
    # scaled per output channel.
    producers = {out: n for n in qdq_model.graph.node for out in n.output}
    weighted = [n for n in qdq_model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 4
    for node in weighted:
        dequantize = producers[node.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        quantized = initializers[dequantize.input[0]]
        assert quantized.data_type == TensorProto.INT8
        scale = numpy_helper.to_array(initializers[dequantize.input[1]])
        assert scale.size == quantized.dims[0] > 1  # one scale per output channel
    # Biases stay float: TensorRT has no INT32 DequantizeLinear.
    for node in weighted:
        assert initializers[node.input[2]].data_type == TensorProto.FLOAT
    # Every zero point is 0 (TensorRT quantizes symmetrically).
    zero_points = [
        numpy_helper.to_array(initializers[n.input[2]])
        for n in qdq_model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert zero_points and not any(z.any() for z in zero_points)


def test_qdq_graph_keeps_accuracy(qdq_model, test_set):
    images, labels = test_set
    reference = torch_logits(trained_net(), images)
    # Level "basic" evaluates the Q/DQ arithmetic as the graph states it, as TensorRT does;
    # ONNX Runtime's fused INT8 kernels saturate on x86 CPUs without VNNI (int8_settings.py).
    logits = _run(qdq_model, images, level="basic")
    assert 1e-3 < mean_relative_error(logits, reference) < 0.05  # quantized, but close
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= 0.95
    assert (logits.argmax(1) == labels).mean() >= (reference.argmax(1) == labels).mean() - 0.05


def test_reduced_range_qdq_is_accurate_with_fused_ort_kernels(net_onnx, test_set):
    images, _ = test_set
    reference = torch_logits(trained_net(), images)
    no_vnni = ort_int8_settings({"avx2"}, "x86_64")  # 7-bit weights: right on any x86 CPU
    qdq = quantize_int8(net_onnx, stripes(64, seed=3)[0], settings=no_vnni)
    logits = _run(qdq.model, images, level="all")
    assert mean_relative_error(logits, reference) < 0.05
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_calibration_inputs_in_every_form(net_onnx, tmp_path):
    model = onnx.load(net_onnx)
    images = stripes(4, seed=5)[0]
    np.save(tmp_path / "calib.npy", images)
    np.savez(tmp_path / "calib.npz", input=images)
    for source in (images, {"input": images}, tmp_path / "calib.npy", tmp_path / "calib.npz"):
        feeds = load_calibration(source, model)
        assert list(feeds) == ["input"]
        np.testing.assert_array_equal(feeds["input"], images)


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        (None, "int8 needs calibration data"),
        (np.zeros((4, 16, 16), np.float32), "rank 4"),
        ({"other": np.zeros((4, 3, 16, 16), np.float32)}, "must cover the model inputs"),
        ("no/such/file.npy", "does not exist"),
    ],
)
def test_bad_calibration_data_is_rejected(net_onnx, calibration, message):
    with pytest.raises(InvalidInputError, match=message):
        load_calibration(calibration, onnx.load(net_onnx))


def test_quantize_rejects_unknown_method(net_onnx):
    with pytest.raises(InvalidInputError, match="calibration method"):
        quantize_int8(net_onnx, stripes(4, seed=5)[0], method="magic")
