"""INT8 on ONNX Runtime for a GDWS graph of a bundled checkpoint, on real Fashion-MNIST images:
pre-processing keeps the float outputs, every conv (depthwise included) runs as QLinearConv,
the INT8 model agrees with FP32 on top-1, and the CLI's INT8 input errors are one line."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gdws_export.cli import main
from gdws_export.gdws.approximate import approximate
from gdws_export.harness.data import load_dataset
from gdws_export.lowering.pipeline import export_onnx
from gdws_export.models import load_model, models_dir
from gdws_export.pipeline.report import ExportReport
from gdws_export.runtimes.build import build
from gdws_export.runtimes.int8_settings import host_ort_int8_settings, ort_int8_settings
from gdws_export.runtimes.onnxruntime import OrtRunner
from gdws_export.runtimes.precision import preprocess_for_quantization, quantize_int8
from tests import _model_files as files
from tests._trained import SLICE

CHECKPOINT = "fmnist_vgg16_bn_w16"
CALIBRATION = models_dir() / "fashion_mnist_calib_512.npz"


@pytest.fixture(scope="module")
def gdws_onnx(tmp_path_factory):
    """The bundled VGG's GDWS graph at half its MACs, every layer as Gather + depthwise + 1x1."""
    torch.manual_seed(0)
    model = load_model(CHECKPOINT)
    gdws, _ = approximate(model, mac_ratio=0.5, input_shape=(1, 28, 28))
    path = tmp_path_factory.mktemp("int8") / "gdws.onnx"
    export_onnx(gdws, input_shape=(1, 28, 28), path=path, lowering="gather", exporter="legacy",
                parity_inputs=calibration()[:16], threads=1)  # fmt: skip
    return path


def calibration() -> np.ndarray:
    return load_dataset(CALIBRATION)[0].numpy()


@pytest.fixture(scope="module")
def test_images():
    """The committed 1000 Fashion-MNIST test images: none of them calibrates."""
    return load_dataset(SLICE)[0].numpy()


def _logits(model, images: np.ndarray, level: str = "all") -> np.ndarray:
    data = model if isinstance(model, bytes) else str(model)
    with OrtRunner(data, threads=1, optimization_level=level) as runner:
        return runner.predict(images)


def test_preprocessing_keeps_the_float_outputs(gdws_onnx, test_images):
    prepared = preprocess_for_quantization(gdws_onnx)
    props = {p.key: p.value for p in prepared.metadata_props}
    assert props.get("onnx.quant.pre_process") == "onnxruntime.quant"  # ORT's own marker
    assert len(prepared.graph.value_info) > 0  # shapes inferred for the quantizer
    images = test_images[:200]
    before, after = _logits(gdws_onnx, images), _logits(prepared.SerializeToString(), images)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()


def test_quantizing_takes_orts_advice_so_it_gives_none(gdws_onnx, caplog):
    with caplog.at_level(logging.WARNING):
        quantized = quantize_int8(gdws_onnx, calibration()[:64], settings=host_ort_int8_settings())
    assert quantized.preprocessed and not quantized.preprocess_error
    assert not [r for r in caplog.records if "pre-process" in r.getMessage()]
    assert quantized.to_dict()["calibration_samples"] == 64


def test_every_conv_runs_in_int8_depthwise_included(gdws_onnx, tmp_path):
    quantized = quantize_int8(gdws_onnx, calibration()[:128], settings=host_ort_int8_settings())
    source = onnx.load(gdws_onnx)
    depthwise = sum(_grouped(n) for n in source.graph.node if n.op_type == "Conv")
    convs = sum(n.op_type == "Conv" for n in source.graph.node)
    assert depthwise >= 4  # the GDWS layers' depthwise convs (group = C)
    options = ort.SessionOptions()
    # "extended": ORT's QDQ fusions, in portable ops (the "all" level makes them NHWC contrib ops)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(quantized.model.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])  # fmt: skip
    fused = onnx.load(tmp_path / "fused.onnx").graph.node
    ops = Counter(n.op_type for n in fused)
    assert ops["Conv"] == 0 and ops["QLinearConv"] == convs
    assert sum(_grouped(n) for n in fused if n.op_type == "QLinearConv") == depthwise
    # uint8 activations absorb every ReLU: one Q at the input, one DQ at the logits
    assert ops["Relu"] == 0 and ops["QuantizeLinear"] == ops["DequantizeLinear"] == 1


def _grouped(node: onnx.NodeProto) -> bool:
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


@pytest.mark.parametrize("cpu", ["this CPU", "x86 without VNNI"])
def test_int8_agrees_with_fp32_on_top1(gdws_onnx, test_images, tmp_path, monkeypatch, cpu):
    import gdws_export.runtimes.build as build_module

    if cpu != "this CPU":  # 7-bit weights, as built on an AVX2-only CPU (right on any x86)
        settings = ort_int8_settings({"avx2"}, "x86_64")
        monkeypatch.setattr(build_module, "host_ort_int8_settings", lambda: settings)
    result = build(gdws_onnx, precision="int8", calibration=calibration(), output_dir=tmp_path,
                   threads=1)  # fmt: skip
    assert result.quantization["calibration_samples"] == 512
    assert result.quantization["reduce_range"] is (cpu != "this CPU" or
                                                   host_ort_int8_settings().reduce_range)  # fmt: skip
    int8 = OrtRunner.from_settings(result.settings_path)
    with int8:
        logits = int8.predict(test_images)
    reference = _logits(gdws_onnx, test_images)
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= 0.99, f"top-1 agreement {agreement:.3f} on {len(reference)} images"


def test_the_report_shows_the_int8_settings_and_why(gdws_onnx):
    quantized = quantize_int8(gdws_onnx, calibration()[:32], settings=host_ort_int8_settings())
    report = ExportReport(
        tool_version="0", created="now", dry_run=False, model={"path": "m.pt", "kind": "x"},
        settings={"target": "ort", "precision": "int8", "lowering": "gather"},
        build={"quantization": quantized.to_dict()},
    )  # fmt: skip
    (line,) = [x for x in report.to_markdown().splitlines() if x.startswith("- INT8: ")]
    assert "U8S8 QDQ" in line and "calibrated on 32 samples (minmax)" in line
    assert quantized.settings.reason in line


@pytest.mark.parametrize("calib", [None, "rgb_32x32"])
def test_cli_int8_input_errors_are_one_line_exit_2(capsys, tmp_path, calib):
    argv = [str(files.checkpoint(tmp_path)), "--int8", "-o", str(tmp_path / "out")]
    if calib is not None:  # the checkpoint takes 1x16x16 images
        path = tmp_path / "calib.npz"
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.random((8, 3, 32, 32), dtype=np.float32), y=np.zeros(8, int))
        argv += ["--calib", str(path)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdws-export: error: ")
    assert ("needs calibration data" if calib is None else "but the model takes (1, 16, 16)") in (
        lines[0]
    )
    assert not (tmp_path / "out").exists()
