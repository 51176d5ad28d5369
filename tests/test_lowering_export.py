"""torch -> ONNX: both exporters, names, dynamic and fixed batch, standard ops only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _lowering_nets import VGG, gdwsify, randomize_batchnorm
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.lowering.export import check_graph, export_model
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.lower import gdws_layers, lower_model
from gdws_export.runtimes import OrtRunner


@pytest.fixture(scope="module")
def gdws_vgg():
    torch.manual_seed(0)
    return gdwsify(randomize_batchnorm(VGG()), 0.1)


def _ops(proto) -> set[str]:
    return {n.op_type for n in proto.graph.node}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_dynamic_batch_runs_batch_1_and_5(gdws_vgg, exporter):
    proto = export_model(gdws_vgg, torch.rand(2, 3, 16, 16), exporter=exporter, opset=18)
    assert proto.opset_import[0].version == 18
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert "Gather" in _ops(proto)  # the reference form
    x = torch.rand(5, 3, 16, 16)
    expected = gdws_vgg(x).detach().numpy()
    with OrtRunner(proto.SerializeToString()) as runner:
        for batch in (1, 5):
            got = runner.predict(x[:batch].numpy())
            np.testing.assert_allclose(got, expected[:batch], rtol=1e-4, atol=1e-5)


def test_fixed_batch_is_fixed(gdws_vgg):
    proto = export_model(gdws_vgg, torch.rand(3, 3, 16, 16), exporter="legacy", dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


@pytest.mark.parametrize("form", ["uniform", "slots", "fold", "fold-2"])
def test_non_gather_forms_export_without_gather(gdws_vgg, form):
    sites, _ = find_fold_sites(gdws_vgg)
    lowered = lower_model(gdws_vgg, {n: form for n in gdws_layers(gdws_vgg)}, sites=sites)
    proto = export_model(lowered, torch.rand(1, 3, 16, 16), exporter="legacy")
    assert "Gather" not in _ops(proto)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)


def test_failing_model_raises_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(UnsupportedModelError, match="fails on an input of shape"):
        export_model(model, torch.rand(2, 3, 8, 8), exporter="legacy")


def test_unknown_exporter_raises():
    with pytest.raises(InvalidInputError, match="exporter"):
        export_model(nn.Conv2d(3, 4, 3), torch.rand(2, 3, 8, 8), exporter="tf")


def test_check_graph_rejects_custom_ops_and_fixed_batch(gdws_vgg):
    proto = export_model(gdws_vgg, torch.rand(1, 3, 16, 16), exporter="legacy")
    custom = onnx.ModelProto()
    custom.CopyFrom(proto)
    custom.graph.node[0].domain = "com.example"
    with pytest.raises(UnsupportedModelError, match="non-standard"):
        check_graph(custom, dynamic_batch=True)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(UnsupportedModelError, match="batch axis"):
        check_graph(fixed, dynamic_batch=True, exporter="dynamo")


def test_importing_lowering_loads_no_onnx_or_runtime():
    import subprocess
    import sys

    code = (
        "import sys, gdws_export.lowering; "
        "print([m for m in ('onnx', 'onnxruntime', 'onnxsim', 'onnxslim', 'tensorrt') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
