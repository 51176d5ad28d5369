"""onnxsim first, onnxslim as fallback, and outputs re-checked after either."""

from __future__ import annotations

import onnx
import pytest
import torch
from _lowering_nets import VGG, gdwsify, randomize_batchnorm
from onnx import numpy_helper

import gdws_export.lowering.simplify as simplify
from gdws_export.lowering.export import export_model


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    return export_model(model, torch.rand(1, 3, 16, 16), exporter="legacy")


@pytest.fixture
def x():
    return torch.rand(2, 3, 16, 16).numpy()


def test_onnxsim_is_used_and_keeps_dynamic_batch(graph, x):
    result = simplify.simplify_model(graph, x)
    assert result.tool == "onnxsim" and not result.notes
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_onnxslim_when_onnxsim_fails(graph, x, monkeypatch):
    real_run = simplify._run

    def failing_onnxsim(tool, model):
        if tool == "onnxsim":
            raise RuntimeError("boom")
        return real_run(tool, model)

    monkeypatch.setattr(simplify, "_run", failing_onnxsim)
    result = simplify.simplify_model(graph, x)
    assert result.tool == "onnxslim"
    assert "onnxsim: failed (RuntimeError: boom)" in result.notes[0]


def test_a_simplifier_that_changes_outputs_is_dropped(graph, x, monkeypatch):
    def corrupting(tool, model):
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        init = max(broken.graph.initializer, key=lambda t: len(t.raw_data))
        weights = numpy_helper.to_array(init) * 1.01
        init.CopyFrom(numpy_helper.from_array(weights, init.name))
        return broken

    monkeypatch.setattr(simplify, "_run", corrupting)
    result = simplify.simplify_model(graph, x)
    assert result.tool == "none" and result.model is graph
    assert all("changed the outputs" in note for note in result.notes)
