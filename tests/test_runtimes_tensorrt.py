"""TensorRT engines: build, sidecar, TrtRunner parity and timing (marked trt/gpu), and what is
checkable without TensorRT (argument checks, the missing-TensorRT error, EngineInfo JSON)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gdws_export._files import file_sha256
from gdws_export.errors import InvalidInputError, MissingDependencyError, UnsupportedModelError
from gdws_export.runtimes.build import build
from gdws_export.runtimes.tensorrt import EngineInfo, build_engine, sidecar_path
from gdws_export.runtimes.tensorrt_runner import TrtRunner
from tests._fake_tensorrt import FakeTensorRT
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
    return export_onnx(trained_net(), tmp_path_factory.mktemp("trt") / "net.onnx")


@pytest.fixture(scope="module")
def images():
    return stripes(32, seed=2)[0]


# --- without TensorRT ----------------------------------------------------------------------


def test_importing_the_runtimes_loads_no_runtime():
    code = (
        "import sys, gdws_export.runtimes, gdws_export.runtimes.build;"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_tensorrt_message(net_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    for call in (
        lambda: build_engine(net_onnx, tmp_path / "net.engine"),
        lambda: TrtRunner(tmp_path / "net.engine").activate(),
    ):
        with pytest.raises(MissingDependencyError, match="pip install") as caught:
            call()
        assert "\n" not in str(caught.value) and "tensorrt" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "bf16"}, "unknown precision"),
        ({"batch": (4, 2, 8)}, "min <= opt <= max"),
        ({"batch": (1, 8)}, "min <= opt <= max"),
        ({"hardware_compatibility": "any"}, "hardware_compatibility"),
        ({"precision": "int8"}, "int8 needs calibration data"),
    ],
)
def test_bad_engine_arguments_fail_before_tensorrt_is_needed(net_onnx, tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        build_engine(net_onnx, tmp_path / "net.engine", **kwargs)


def test_engine_info_round_trips_through_json(tmp_path):
    info = EngineInfo(
        engine_path="m.engine",
        onnx_path="m.onnx",
        onnx_sha256="ab",
        source_onnx_path="m.onnx",
        source_onnx_sha256="ab",
        precision="fp16",
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        strongly_typed=False,
        builder_flags=["FP16"],
        tf32=True,
        profile={"input": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [8, 3, 32, 32]}},
        io_dtypes={"input": "DataType.FLOAT"},
    )
    path = info.save(sidecar_path(tmp_path / "m.engine"))
    assert path.name == "m.engine.json"
    assert EngineInfo.load(path) == info


# --- build_engine's logic against a stand-in tensorrt module (tests/_fake_tensorrt.py) -----


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version: str) -> FakeTensorRT:
        fake = FakeTensorRT(version)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    return install


def _unsupported_graph(path):
    """A valid ONNX file whose one node (a custom-domain op) no TensorRT parser knows."""
    node = helper.make_node("Mystery", ["x"], ["y"], name="the_odd_node", domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def _initializer_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(path).graph.initializer if t.data_type != 7}


def test_trt10_fp16_sets_the_builder_flag_on_the_fp32_graph(fake_trt, net_onnx, tmp_path):
    fake = fake_trt("10.3.0")
    info = build_engine(net_onnx, tmp_path / "net.fp16.engine", precision="fp16")
    assert fake.calls["parsed"] == str(net_onnx)
    assert fake.calls["network_flags"] == 0  # weakly typed
    assert fake.calls["config"].flags == {"FP16", "TF32"}
    assert (info.strongly_typed, info.builder_flags, info.tf32) == (False, ["FP16"], True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.fp16.engine", "net.fp16.engine.json"]


def test_trt11_fp16_builds_the_converted_fp16_graph(fake_trt, net_onnx, tmp_path):
    fake = fake_trt("11.1.0")  # has no BuilderFlag.FP16: using it would raise
    info = build_engine(net_onnx, tmp_path / "net.fp16.engine", precision="fp16")
    parsed = tmp_path / "net.fp16.trt.onnx"
    assert fake.calls["parsed"] == str(parsed) == info.onnx_path
    assert _initializer_types(parsed) == {TensorProto.FLOAT16}
    assert fake.calls["config"].flags == {"TF32"}
    assert info.strongly_typed and info.builder_flags == []
    assert info.onnx_sha256 == file_sha256(parsed) != info.source_onnx_sha256
    assert info.io_dtypes == {"input": "FLOAT", "logits": "FLOAT"}  # keep_io_types


def test_trt11_fp16_io_can_be_half(fake_trt, net_onnx, tmp_path):
    fake_trt("11.0.0")
    info = build_engine(net_onnx, tmp_path / "e.engine", precision="fp16", keep_io_types=False)
    assert info.io_dtypes == {"input": "HALF", "logits": "HALF"}


def test_trt10_fp16_io_can_be_half(fake_trt, net_onnx, tmp_path):
    fake_trt("10.3.0")
    info = build_engine(net_onnx, tmp_path / "e.engine", precision="fp16", keep_io_types=False)
    assert info.io_dtypes == {"input": "HALF", "logits": "HALF"}


@pytest.mark.parametrize(
    ("version", "flags"), [("10.3.0", {"INT8", "FP16", "TF32"}), ("11.1.0", {"TF32"})]
)
def test_int8_builds_the_qdq_graph(fake_trt, net_onnx, tmp_path, version, flags):
    fake = fake_trt(version)
    info = build_engine(
        net_onnx, tmp_path / "net.int8.engine", precision="int8", calibration=stripes(16, 3)[0]
    )
    parsed = onnx.load(fake.calls["parsed"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in parsed.graph.node}
    assert fake.calls["config"].flags == flags
    assert fake.calls["config"].calibrator is None  # explicit Q/DQ: no implicit calibration
    assert info.warnings == []  # the Q/DQ graph passes check_trt_support
    # the same symmetric INT8 Q/DQ graph on both versions, whatever CPU built it
    assert info.quantization["target"] == "tensorrt"
    assert info.quantization["activation_type"] == info.quantization["weight_type"] == "int8"
    assert info.quantization["activation_symmetric"] and not info.quantization["reduce_range"]
    assert info.quantization["preprocessed"] and info.quantization["calibration_samples"] == 16
    assert EngineInfo.load(sidecar_path(tmp_path / "net.int8.engine")) == info


def test_fp32_turns_tf32_off_and_sets_the_batch_profile(fake_trt, net_onnx, tmp_path):
    fake = fake_trt("10.3.0")
    info = build_engine(
        net_onnx,
        tmp_path / "e.engine",
        batch=(2, 4, 16),
        workspace_mib=256,
        hardware_compatibility="ampere_plus",
    )
    config = fake.calls["config"]
    assert config.flags == set() and info.tf32 is False
    (profile,) = config.profiles
    assert profile.shapes == {"input": ((2, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16))}
    assert info.profile["input"]["max"] == [16, 3, 16, 16]
    assert config.pools == {"WORKSPACE": 256 << 20}
    assert config.hardware_compatibility_level == "AMPERE_PLUS"
    assert (tmp_path / "e.engine").read_bytes() == b'{"flags": []}'


def test_static_inputs_need_no_profile(fake_trt, tmp_path):
    fake = fake_trt("11.1.0")
    static = export_onnx(trained_net(), tmp_path / "static.onnx", dynamic_batch=False)
    info = build_engine(static, tmp_path / "s.engine", batch=(1, 8, 64))
    assert fake.calls["config"].profiles == []
    assert info.profile == {"input": {k: [2, 3, 16, 16] for k in ("min", "opt", "max")}}


def test_timing_cache_is_loaded_extended_and_saved(fake_trt, net_onnx, tmp_path):
    fake_trt("10.3.0")
    cache = tmp_path / "caches" / "gpu.cache"
    build_engine(net_onnx, tmp_path / "a.engine", timing_cache=cache)
    assert json.loads(cache.read_bytes()) == ["tactic-0"]
    build_engine(net_onnx, tmp_path / "b.engine", timing_cache=cache)
    assert json.loads(cache.read_bytes()) == ["tactic-0", "tactic-1"]  # reused and extended


def test_parser_and_builder_failures_leave_no_engine(fake_trt, net_onnx, tmp_path):
    fake = fake_trt("10.3.0")
    with pytest.raises(UnsupportedModelError, match="node the_odd_node \\(Mystery\\)"):
        build_engine(_unsupported_graph(tmp_path / "u.onnx"), tmp_path / "u.engine")
    fake.fail_build = True
    with pytest.raises(UnsupportedModelError, match="reformatting-free"):
        build_engine(net_onnx, tmp_path / "n.engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.onnx"]


def test_tensorrt_9_is_refused(fake_trt, net_onnx, tmp_path):
    fake_trt("9.3.0")
    with pytest.raises(MissingDependencyError, match="too old"):
        build_engine(net_onnx, tmp_path / "e.engine")


def test_build_api_uses_build_engine(fake_trt, net_onnx, tmp_path):
    fake_trt("11.1.0")
    result = build(net_onnx, target="trt", precision="fp16", output_dir=tmp_path, batch=(1, 2, 4))
    assert result.engine_path == str(tmp_path / "net.fp16.engine")
    assert result.settings_path == str(tmp_path / "net.fp16.engine.json")
    assert result.versions["tensorrt"] == "11.1.0"
    info = EngineInfo.load(result.settings_path)
    assert info.profile["input"]["opt"] == [2, 3, 16, 16]
    assert result.quantization is None  # FP16: nothing quantized


def test_build_api_reports_the_int8_settings(fake_trt, net_onnx, tmp_path):
    fake_trt("11.1.0")
    result = build(net_onnx, target="trt", precision="int8", calibration=stripes(16, 3)[0],
                   output_dir=tmp_path)  # fmt: skip
    assert result.quantization == EngineInfo.load(result.settings_path).quantization
    assert result.quantization["summary"].startswith("S8S8 QDQ (int8 symmetric activations")


# --- with TensorRT and a GPU ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32_engine(net_onnx, tmp_path_factory):
    engine = tmp_path_factory.mktemp("fp32") / "net.fp32.engine"
    return build_engine(net_onnx, engine, precision="fp32", batch=(1, 8, 32))


@pytest.mark.trt
@pytest.mark.gpu
def test_fp32_engine_sidecar_describes_the_build(fp32_engine, net_onnx):
    import tensorrt as trt
    import torch

    info = EngineInfo.load(sidecar_path(fp32_engine.engine_path))
    assert info == fp32_engine
    assert info.tensorrt_version == trt.__version__
    assert info.gpu_name == torch.cuda.get_device_name()
    assert info.compute_capability == "{}.{}".format(*torch.cuda.get_device_capability())
    assert info.precision == "fp32" and info.tf32 is False
    assert info.profile == {
        "input": {"min": [1, 3, 16, 16], "opt": [8, 3, 16, 16], "max": [32, 3, 16, 16]}
    }
    assert info.source_onnx_sha256 == file_sha256(net_onnx) == info.onnx_sha256
    assert info.build_seconds > 0


@pytest.mark.trt
@pytest.mark.gpu
def test_fp32_engine_matches_pytorch(fp32_engine, images):
    with TrtRunner(fp32_engine.engine_path) as runner:
        (spec,) = runner.inputs()
        assert spec.name == "input" and spec.shape == (None, 3, 16, 16)
        assert spec.dtype == np.float32
        for batch in (1, 7, 32):  # anywhere in the profile
            logits = runner.predict(images[:batch])
            assert logits.shape == (batch, 4)
            reference = torch_logits(trained_net(), images[:batch])
            assert relative_error(logits, reference) < 1e-4
        with pytest.raises(InvalidInputError, match="optimization profile"):
            runner.predict(np.concatenate([images, images]))  # 64 > max batch 32


@pytest.mark.trt
@pytest.mark.gpu
def test_gpu_timing(fp32_engine, images):
    feed = {"input": images[:8]}
    with TrtRunner(fp32_engine.engine_path) as runner:
        compute = runner.time_compute(feed, iterations=20, warmup=5)
        latency = runner.time_latency(feed, iterations=20, warmup=5)
    assert len(compute) == len(latency) == 20
    assert all(t > 0 for t in compute + latency)
    assert np.median(latency) >= np.median(compute) * 0.9  # copies add time, within noise


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("keep_io_types", [True, False])
def test_fp16_engine(net_onnx, images, tmp_path, keep_io_types):
    info = build_engine(
        net_onnx, tmp_path / "net.fp16.engine", precision="fp16", keep_io_types=keep_io_types
    )
    with TrtRunner(info.engine_path) as runner:
        (spec,) = runner.inputs()
        assert spec.dtype == (np.float32 if keep_io_types else np.float16)
        logits = runner.predict(images)
    reference = torch_logits(trained_net(), images)
    assert relative_error(logits.astype(np.float32), reference) < 1e-2
    if info.strongly_typed:  # TensorRT 11: built from the converted FP16 graph
        assert info.onnx_path.endswith("net.fp16.trt.onnx") and info.builder_flags == []
    else:  # TensorRT 10: the FP16 builder flag on the FP32 graph
        assert info.builder_flags == ["FP16"]


@pytest.mark.trt
@pytest.mark.gpu
def test_int8_engine_keeps_accuracy(net_onnx, images, tmp_path):
    info = build_engine(
        net_onnx, tmp_path / "net.int8.engine", precision="int8", calibration=stripes(64, 3)[0]
    )
    assert info.onnx_path.endswith("net.int8.trt.onnx")  # the Q/DQ graph, kept for inspection
    with TrtRunner(info.engine_path) as runner:
        logits = runner.predict(images)
    reference = torch_logits(trained_net(), images)
    assert mean_relative_error(logits, reference) < 0.05
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9


@pytest.mark.trt
@pytest.mark.gpu
def test_timing_cache_is_saved_and_reused(net_onnx, tmp_path):
    cache = tmp_path / "gpu.cache"
    build_engine(net_onnx, tmp_path / "a.engine", timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    first = cache.read_bytes()
    info = build_engine(net_onnx, tmp_path / "b.engine", timing_cache=cache)
    assert info.timing_cache == str(cache)
    assert len(cache.read_bytes()) >= len(first)


@pytest.mark.trt
@pytest.mark.gpu
def test_parser_errors_name_the_node(tmp_path):
    with pytest.raises(UnsupportedModelError, match="the_odd_node"):
        build_engine(_unsupported_graph(tmp_path / "u.onnx"), tmp_path / "u.engine")
    assert not (tmp_path / "u.engine").exists()


@pytest.mark.trt
@pytest.mark.gpu
def test_build_api_trt_target(net_onnx, images, tmp_path):
    result = build(net_onnx, target="trt", precision="fp32", output_dir=tmp_path)
    assert result.engine_path == str(tmp_path / "net.fp32.engine")
    assert result.settings_path == str(tmp_path / "net.fp32.engine.json")
    assert "tensorrt" in result.versions
    with TrtRunner(result.engine_path) as runner:
        logits = runner.predict(images)
    assert relative_error(logits, torch_logits(trained_net(), images)) < 1e-4
