"""`build` for the ONNX Runtime target, bad input, and a missing TensorRT."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gdws_export.errors import InvalidInputError, MissingDependencyError, UnsupportedModelError
from gdws_export.runtimes.build import BuildResult, build
from gdws_export.runtimes.onnxruntime import OrtRunner, OrtSettings
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
    return export_onnx(trained_net(), tmp_path_factory.mktemp("build") / "net.onnx")


@pytest.fixture(scope="module")
def images():
    return stripes(64, seed=2)[0]


def _logits(settings_path, images):
    with OrtRunner.from_settings(settings_path) as runner:
        return runner.predict(images)


def test_ort_fp32_build_writes_a_portable_model_and_settings(net_onnx, images, tmp_path):
    result = build(net_onnx, target="ort", precision="fp32", output_dir=tmp_path, threads=1)
    assert result.engine_path == str(tmp_path / "net.fp32.ort.onnx")
    assert result.settings_path == str(tmp_path / "net.fp32.ort.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.fp32.ort.json", "net.fp32.ort.onnx"]
    saved = json.loads((tmp_path / "net.fp32.ort.json").read_text())
    assert saved["model"] == "net.fp32.ort.onnx"  # relative: the pair can move together
    assert saved["threads"] == 1
    assert saved["optimization_level"] == "all"
    assert saved["file_optimization_level"] == "basic"
    assert saved["providers"] == ["CPUExecutionProvider"]
    assert saved["onnxruntime_version"] == result.versions["onnxruntime"]
    # Basic optimizations keep standard ONNX ops only (no contrib or NCHWc ops).
    model = onnx.load(result.engine_path)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    logits = _logits(result.settings_path, images)
    assert relative_error(logits, torch_logits(trained_net(), images)) < 1e-4


def test_ort_settings_reload_as_saved(net_onnx, tmp_path):
    result = build(net_onnx, output_dir=tmp_path, threads=2, optimization_level="extended")
    runner = OrtRunner.from_settings(result.settings_path)
    assert (runner.threads, runner.optimization_level) == (2, "extended")
    assert runner.providers == ["CPUExecutionProvider"]
    settings = OrtSettings.load(result.settings_path)
    options = runner.session_options()
    assert options.intra_op_num_threads == 2
    assert settings.source_onnx_sha256 == result.source_onnx_sha256
    assert BuildResult.from_dict(json.loads(result.to_json())) == result


def test_idle_sessions_stop_spinning_unless_asked(net_onnx, tmp_path):
    """Interleaved benchmarks keep many sessions open: a spinning idle one would slow the
    next."""
    key = "session.force_spinning_stop"
    result = build(net_onnx, output_dir=tmp_path, threads=2)
    runner = OrtRunner.from_settings(result.settings_path)
    assert OrtSettings.load(result.settings_path).spin_between_runs is False
    assert runner.session_options().get_session_config_entry(key) == "1"
    spinning = OrtRunner(net_onnx, threads=2, spin_between_runs=True).session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):
        spinning.get_session_config_entry(key)


def test_default_threads_are_recorded_as_a_number(net_onnx, tmp_path):
    result = build(net_onnx, output_dir=tmp_path)
    assert OrtSettings.load(result.settings_path).threads >= 1


def test_settings_and_model_move_together(net_onnx, images, tmp_path):
    result = build(net_onnx, output_dir=tmp_path / "a", threads=1)
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "net.fp32.ort.json"
    np.testing.assert_allclose(
        _logits(moved, images), torch_logits(trained_net(), images), rtol=1e-4, atol=1e-5
    )
    assert not (tmp_path / "a").exists() and result.settings_path.endswith("net.fp32.ort.json")


def test_a_changed_model_file_is_refused(net_onnx, tmp_path):
    result = build(net_onnx, output_dir=tmp_path, threads=1)
    shutil.copy(net_onnx, result.engine_path)  # a different graph under the saved name
    with pytest.raises(InvalidInputError, match="changed since"):
        OrtRunner.from_settings(result.settings_path)
    Path(result.engine_path).unlink()
    with pytest.raises(InvalidInputError, match="missing"):
        OrtRunner.from_settings(result.settings_path)


def test_ort_fp16_build_matches_fp32(net_onnx, images, tmp_path):
    result = build(net_onnx, precision="fp16", output_dir=tmp_path, threads=1)
    model = onnx.load(result.engine_path)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert conv_weights and {types[w] for w in conv_weights} == {TensorProto.FLOAT16}
    logits = _logits(result.settings_path, images)
    assert logits.dtype == np.float32
    assert relative_error(logits, torch_logits(trained_net(), images)) < 1e-2
    assert OrtSettings.load(result.settings_path).file_optimization_level == "disable"
    assert any("float32" in w for w in result.warnings)  # CPU: no FP16 speed to expect


def test_ort_int8_build_is_accurate(net_onnx, images, tmp_path):
    result = build(
        net_onnx, precision="int8", calibration=stripes(64, seed=3)[0], output_dir=tmp_path
    )
    ops = {n.op_type for n in onnx.load(result.engine_path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    logits = _logits(result.settings_path, images)  # level "all": fused INT8 kernels
    reference = torch_logits(trained_net(), images)
    assert mean_relative_error(logits, reference) < 0.05
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_timing_hooks_of_a_host_runner(net_onnx, images):
    with OrtRunner(net_onnx, threads=1) as runner:
        times = runner.time_compute({"input": images[:2]}, iterations=5, warmup=1)
        assert len(times) == 5 and all(t > 0 for t in times)
        assert len(runner.time_latency({"input": images[:2]}, iterations=3, warmup=0)) == 3
        with pytest.raises(InvalidInputError, match="iterations"):
            runner.time_compute({"input": images[:2]}, iterations=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "tflite"}, "unknown target"),
        ({"precision": "int4"}, "unknown precision"),
        ({"precision": "int8"}, "int8 needs calibration data"),
        ({"batch": (1, 8, 32)}, "batch do"),
        ({"target": "trt", "threads": 4}, "threads do"),
        ({"optimization_level": "max"}, "optimization_level"),
        ({"threads": 0}, "threads must be"),
    ],
)
def test_bad_arguments_are_invalid_input(net_onnx, tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        build(net_onnx, output_dir=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_or_corrupt_onnx_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        build(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(InvalidInputError, match="corrupt.onnx"):
        build(corrupt, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_graph_ort_cannot_load_leaves_no_files(tmp_path):
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(UnsupportedModelError, match="ONNX Runtime could not load"):
        build(tmp_path / "odd.onnx", output_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no temporary or half-written file


def test_missing_tensorrt_fails_with_the_install_hint(net_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(MissingDependencyError) as caught:
        build(net_onnx, target="trt", precision="fp16", output_dir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "tensorrt" in message and "pip install" in message
    assert list(tmp_path.iterdir()) == []
