"""GDWS settings stored in the ONNX metadata and read back."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from gdws_export.errors import InvalidInputError
from gdws_export.lowering.metadata import METADATA_KEY, read_metadata, write_metadata


def _model() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["input"], ["logits"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
    )  # fmt: skip
    return helper.make_model(graph)


def test_round_trip_in_memory_and_file(tmp_path):
    model = _model()
    data = {"settings": {"beta": 0.01}, "layers": {"a.conv": {"kernels_per_channel": [1, 2]}}}
    write_metadata(model, data)
    assert read_metadata(model) == data
    onnx.save(model, tmp_path / "m.onnx")
    assert read_metadata(tmp_path / "m.onnx") == data
    assert read_metadata(str(tmp_path / "m.onnx"))["settings"]["beta"] == 0.01


def test_rewrite_replaces_and_keeps_other_entries():
    model = _model()
    other = model.metadata_props.add()
    other.key, other.value = "author", "me"
    write_metadata(model, {"v": 1})
    write_metadata(model, {"v": 2})
    assert [p.key for p in model.metadata_props].count(METADATA_KEY) == 1
    assert read_metadata(model) == {"v": 2}
    assert {p.key: p.value for p in model.metadata_props}["author"] == "me"


def test_absent_and_unserializable():
    assert read_metadata(_model()) == {}
    with pytest.raises(InvalidInputError, match="JSON"):
        write_metadata(_model(), {"x": object()})
