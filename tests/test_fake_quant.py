"""The fake-quantized twin of an INT8 Q/DQ graph: it computes what the ONNX Runtime INT8 engine
computes on real images (the bundled VGG's GDWS graph, calibrated on the bundled images), its
ops match ONNX Runtime on the float graph, its rounding is straight-through, and what it cannot
compute is one clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.approximate import approximate
from gdws_export.harness.data import load_dataset
from gdws_export.lowering.pipeline import export_onnx
from gdws_export.models import load_model, models_dir
from gdws_export.runtimes.build import build
from gdws_export.runtimes.fake_quant import (
    engine_qdq_graph,
    fake_quant_twin,
    fake_quantize,
    round_ste,
    twin_of_engine,
)
from gdws_export.runtimes.onnxruntime import OrtRunner
from gdws_export.runtimes.precision import quantize_int8
from gdws_export.runtimes.tensorrt import EngineInfo
from tests._trained import SLICE

CHECKPOINT = "fmnist_vgg16_bn_w16"
CALIBRATION = models_dir() / "fashion_mnist_calib_512.npz"
IMAGES = 300  # of the committed test slice: none of them calibrates


@pytest.fixture(scope="module")
def vgg_int8(tmp_path_factory):
    """(float GDWS graph, its ONNX Runtime INT8 BuildResult, test images): the bundled VGG at
    half its MACs, every GDWS layer as Gather + depthwise + 1x1, calibrated on 512 images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CPU: one thread per process
    torch.manual_seed(0)
    calibration = load_dataset(CALIBRATION)[0].numpy()
    gdws, _ = approximate(load_model(CHECKPOINT), mac_ratio=0.5, input_shape=(1, 28, 28))
    folder = tmp_path_factory.mktemp("fake_quant")
    path = folder / "gdws.onnx"
    export_onnx(gdws, input_shape=(1, 28, 28), path=path, lowering="gather", exporter="legacy",
                parity_inputs=calibration[:16], threads=1)  # fmt: skip
    built = build(path, precision="int8", calibration=calibration, output_dir=folder, threads=1)
    yield path, built, load_dataset(SLICE)[0][:IMAGES].numpy()
    torch.set_num_threads(threads)


def _output_step(graph_path) -> float:
    """The scale of the graph output's DequantizeLinear: the engine's logits are multiples of
    it (its uint8 logits, dequantized)."""
    graph = onnx.load(graph_path).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    (last,) = [n for n in graph.node if n.output[0] == graph.output[0].name]
    assert last.op_type == "DequantizeLinear"
    return float(constants[last.input[1]])


def test_the_twin_computes_what_the_int8_engine_computes(vgg_int8):
    _, built, images = vgg_int8
    twin = twin_of_engine("ort", built.engine_path, built.settings_path)
    assert twin.quantized_activations >= 20  # every conv's output, the input, the logits
    with torch.no_grad():
        logits = twin(torch.from_numpy(images)).numpy()
    with OrtRunner.from_settings(built.settings_path) as engine:  # QLinearConv kernels
        reference = engine.predict(images)
    step = _output_step(built.engine_path)
    steps = np.abs(logits - reference) / step
    # The engine requantizes each layer's int32 sums in its own arithmetic (integer multiplier,
    # summation order): a value within float rounding of a half step can land one step away,
    # and the layers after carry it. Both logits are whole multiples of the output step, so
    # they agree exactly or differ by whole steps. Measured here: at most 1 step, 99.0 % of
    # logits exact; 2 steps allows other CPUs' kernels (VNNI or not) their own roundings.
    assert steps.max() <= 2 + 1e-3, f"largest difference {steps.max():.2f} output steps"
    assert (steps < 1e-3).mean() >= 0.97
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99


def test_the_twin_of_a_tensorrt_int8_graph(vgg_int8, tmp_path):
    """TensorRT's graph (symmetric int8 activations, float biases, ReLUs kept, one Q/DQ pair
    per consumer), found through the engine's EngineInfo as a relocated build stores it, and
    run here by ONNX Runtime (no GPU needed)."""
    path, _, images = vgg_int8
    graph = tmp_path / "gdws.int8.trt.onnx"
    onnx.save(quantize_int8(path, load_dataset(CALIBRATION)[0][:128].numpy()).model, graph)
    info = EngineInfo(
        engine_path="gdws.int8.engine", onnx_path=graph.name, onnx_sha256="",
        source_onnx_path="gdws.onnx", source_onnx_sha256="", precision="int8",
        tensorrt_version="", gpu_name="", compute_capability="", strongly_typed=True,
        builder_flags=[], tf32=False, profile={}, io_dtypes={},
    )  # fmt: skip
    info.save(tmp_path / "gdws.int8.engine.json")
    assert engine_qdq_graph("trt", "e", tmp_path / "gdws.int8.engine.json") == graph
    twin = twin_of_engine("trt", "e", tmp_path / "gdws.int8.engine.json")
    with torch.no_grad():
        logits = twin(torch.from_numpy(images)).numpy()
    with OrtRunner(graph, threads=1) as runner:
        reference = runner.predict(images)
    # The logits leave this graph in float (no Q/DQ after the last Gemm), so an activation one
    # int8 step apart, as above, moves them a little rather than by a whole step; ORT's S8S8
    # kernels requantize too. Measured: 1.6 % of the logits' range at most, top-1 99.7 %.
    assert np.abs(logits - reference).max() <= 0.05 * np.abs(reference).max()
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99


def test_the_twins_ops_match_onnx_runtime_on_the_float_graph(vgg_int8):
    path, _, images = vgg_int8
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Gather", "Conv", "Gemm"} <= ops  # the GDWS lowering's channel gather included
    twin = fake_quant_twin(path, require_quantized=False)
    with torch.no_grad():
        logits = twin(torch.from_numpy(images[:64])).numpy()
    with OrtRunner(path, threads=1) as runner:
        reference = runner.predict(images[:64])
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


def test_rounding_is_straight_through_and_the_clamp_is_not():
    x = torch.tensor([-3.0, 0.26, 0.74, 1.5, 2.5, 300.0], requires_grad=True)
    assert torch.equal(round_ste(x), torch.tensor([-3.0, 0.0, 1.0, 2.0, 2.0, 300.0]))  # half-even
    (grad,) = torch.autograd.grad(round_ste(x).sum(), x)
    assert torch.equal(grad, torch.ones(6))
    # uint8, scale 1, zero point 0: the clamp at 0 is the ReLU ONNX Runtime removed; its
    # gradient stays zero below the range (and above it), as the engine's output does not move.
    y = fake_quantize(x, torch.tensor(1.0), torch.tensor(0, dtype=torch.uint8), 1, (0, 255))
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0, 255.0]))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, torch.tensor([0.0, 1, 1, 1, 1, 0]))


def test_per_channel_weights_use_their_own_scales():
    # Powers of two: every value is exact, so the test sees quantization and nothing else.
    w = torch.tensor([[0.5, -1.0], [10 * 2.0**-12, 100 * 2.0**-12]])
    zero = torch.zeros(2, dtype=torch.int8)
    per_channel = fake_quantize(w, torch.tensor([2.0**-7, 2.0**-12]), zero, 0, (-128, 127))
    assert torch.equal(per_channel, w)
    per_tensor = fake_quantize(w, torch.tensor(2.0**-7), zero[0], 0, (-128, 127))
    assert torch.equal(per_tensor[1], torch.tensor([0.0, 3 * 2.0**-7]))  # row 0 sets the step


def test_the_twin_has_input_gradients(vgg_int8):
    _, built, images = vgg_int8
    twin = twin_of_engine("ort", built.engine_path, built.settings_path)
    x = torch.from_numpy(images[:4]).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(twin(x), torch.zeros(4, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, x)
    assert bool((grad.abs().flatten(1).sum(1) > 0).all())  # every image gets a direction


def _graph(op_type: str, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x"], ["y"], **attrs)
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 4, 4]) for n in "xy"]
    graph = helper.make_graph([node], "g", io[:1], io[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_op_it_does_not_implement_is_named():
    with pytest.raises(UnsupportedModelError, match=r"does not implement the ops LRN of"):
        fake_quant_twin(_graph("LRN", size=3), require_quantized=False)


def test_a_float_graph_is_not_a_twin_unless_asked(vgg_int8, tmp_path):
    path, _, _ = vgg_int8
    with pytest.raises(InvalidInputError, match="no QuantizeLinear node"):
        fake_quant_twin(path)
    fp32 = build(path, precision="fp32", output_dir=tmp_path, threads=1)
    with pytest.raises(InvalidInputError, match="is a fp32 build"):
        engine_qdq_graph("ort", fp32.engine_path, fp32.settings_path)
    with pytest.raises(InvalidInputError, match="has no INT8 Q/DQ graph"):
        engine_qdq_graph("torch", "m.pt2", "m.torch.json")
