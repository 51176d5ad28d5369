"""Triton model repositories, parsed with Triton's own protobuf schema (tritonclient)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gdws_export.errors import UnsupportedModelError
from gdws_export.runtimes import OrtRunner, TensorSpec
from gdws_export.serving import has_dynamic_batch, triton_config, write_triton_model
from tests import _model_files as files

tritonclient = pytest.importorskip(
    "tritonclient",
    reason="Triton's config schema comes with tritonclient: pip install tritonclient",
)
text_format = pytest.importorskip("google.protobuf.text_format")


def _model_config_module():
    """tritonclient's generated ModelConfig schema (model_config.proto).

    `tritonclient.grpc` refuses to import without grpcio (RuntimeError), though the schema
    module itself needs only protobuf: then it is loaded from its file.
    """
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):
        path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


model_config_pb2 = _model_config_module()

IMAGE = TensorSpec("input", ("batch", 3, 32, 32), np.dtype(np.float32))
LOGITS = TensorSpec("logits", ("batch", 10), np.dtype(np.float32))


def _parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _dtype_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def test_dynamic_batch_config():
    config = _parse(triton_config("vgg", "trt", [IMAGE], [LOGITS], max_batch_size=64))
    assert (config.name, config.platform, config.max_batch_size) == ("vgg", "tensorrt_plan", 64)
    assert [(t.name, _dtype_name(t.data_type), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [3, 32, 32])
    ]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [10])]
    assert config.HasField("dynamic_batching")


def test_fixed_batch_config_keeps_the_batch_axis():
    fixed_in = TensorSpec("input", (4, 1, 28, 28), np.dtype(np.float16))
    fixed_out = TensorSpec("logits", (4, 10), np.dtype(np.float16))
    assert not has_dynamic_batch([fixed_in]) and has_dynamic_batch([IMAGE])
    config = _parse(triton_config("m", "ort", [fixed_in], [fixed_out], max_batch_size=0))
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    assert list(config.input[0].dims) == [4, 1, 28, 28]
    assert _dtype_name(config.input[0].data_type) == "TYPE_FP16"
    assert not config.HasField("dynamic_batching")


def test_symbolic_dims_become_minus_one():
    spec = TensorSpec("input", ("batch", 3, "height", "width"), np.dtype(np.float32))
    config = _parse(triton_config("m", "ort", [spec], [LOGITS], max_batch_size=8))
    assert list(config.input[0].dims) == [3, -1, -1]


def test_types_triton_lacks_are_refused():
    odd = TensorSpec("input", ("batch", 2), np.dtype(np.complex64))
    with pytest.raises(UnsupportedModelError, match="complex64"):
        triton_config("m", "ort", [odd], [LOGITS], max_batch_size=1)


def test_model_directory_layout(tmp_path):
    engine = tmp_path / "engine.onnx"
    engine.write_bytes(b"model bytes")
    written = write_triton_model(tmp_path / "repo" / "m", name="m", engine=engine, target="ort",
                                 inputs=[IMAGE], outputs=[LOGITS], max_batch_size=16)  # fmt: skip
    folder = tmp_path / "repo" / "m"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt"
    ]  # fmt: skip
    assert (folder / "1" / "model.onnx").read_bytes() == b"model bytes"
    assert written.model_file == "1/model.onnx" and written.inputs[0]["dims"] == [3, 32, 32]


@pytest.mark.parametrize("static", [False, True])
def test_exported_repository_matches_the_engine(tmp_path, static):
    from gdws_export.pipeline import ExportConfig, run_export

    path = files.checkpoint(tmp_path)
    report = run_export(
        ExportConfig(str(path), output=str(tmp_path / "out"), exporter="legacy",
                     lowering="gather", triton_repo=str(tmp_path / "repo"), batch=8,
                     dynamic_batch=not static),
    )  # fmt: skip
    folder = tmp_path / "repo" / "lenet"
    config = _parse((folder / "config.pbtxt").read_text())
    assert config.name == "lenet" == folder.name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == (0 if static else 8)
    assert report.triton["max_batch_size"] == config.max_batch_size
    with OrtRunner(folder / "1" / "model.onnx") as runner:  # the served file runs as is
        real_in, real_out = runner.inputs(), runner.outputs()
        x = files.images(8).numpy()
        assert runner.predict(x).shape == (8, 10)
    for tensors, real in ((config.input, real_in), (config.output, real_out)):
        assert [t.name for t in tensors] == [s.name for s in real]
        assert [_dtype_name(t.data_type) for t in tensors] == ["TYPE_FP32"] * len(real)
        for tensor, spec in zip(tensors, real, strict=True):
            dims = spec.shape if static else spec.shape[1:]
            assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in dims]
    assert config.HasField("dynamic_batching") != static


def test_an_existing_model_directory_needs_force(tmp_path):
    from gdws_export.errors import InvalidInputError
    from gdws_export.pipeline import ExportConfig, run_export

    (tmp_path / "repo" / "lenet").mkdir(parents=True)
    config = ExportConfig(str(files.checkpoint(tmp_path)), output=str(tmp_path / "out"),
                          triton_repo=str(tmp_path / "repo"))  # fmt: skip
    with pytest.raises(InvalidInputError, match=r"Triton model directory .*lenet already exists"):
        run_export(config)
    assert (
        not (tmp_path / "out").exists() and list((tmp_path / "repo").iterdir())[0].name == "lenet"
    )
