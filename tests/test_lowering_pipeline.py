"""`export_onnx` end to end: every lowering, parity, report, metadata, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from _lowering_nets import VGG, ResNet, gdwsify, randomize_batchnorm
from torch import nn

import gdws_export.lowering.pipeline as pipeline
from gdws_export.errors import InvalidInputError, ParityError
from gdws_export.lowering import ExportResult, export_onnx, read_metadata
from gdws_export.lowering.auto import fastest_form
from gdws_export.runtimes import OrtRunner

NETS = {"vgg": VGG, "resnet": ResNet, "preact": lambda: ResNet(preact=True)}
LOWERINGS = ["gather", "uniform", "slots", "fold", "fold-2", "dense"]
BETAS = [0.02, 0.1, 0.4]


def _inputs(n=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, 16, 16), np.float32))


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_every_lowering_matches_pytorch(tmp_path, net, lowering):
    torch.manual_seed(0)
    beta = BETAS[(list(NETS).index(net) + LOWERINGS.index(lowering)) % len(BETAS)]
    model = gdwsify(randomize_batchnorm(NETS[net]()), beta)
    x = _inputs()
    result = export_onnx(
        model, input_shape=(3, 16, 16), path=tmp_path / "m.onnx", lowering=lowering,
        exporter="legacy", parity_inputs=x, metadata={"beta": beta},
    )  # fmt: skip
    assert result.parity.passed and result.parity.top1_agreement == 1.0
    assert result.parity.relative_diff < 1e-4 and result.parity.n_inputs == 6
    graph = onnx.load(result.onnx_path)
    ops = {n.op_type for n in graph.graph.node}
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
    if lowering in ("uniform", "slots", "dense") or (lowering.startswith("fold") and net == "vgg"):
        assert "Gather" not in ops
    shipped = set(result.forms.values())
    assert shipped <= {lowering, "gather"} and (lowering in shipped)
    with OrtRunner(result.onnx_path) as runner:  # the file on disk, at batch 1 and 5
        for n in (1, 5):
            np.testing.assert_allclose(
                runner.predict(x[:n].numpy()), model(x[:n]).detach().numpy(), atol=1e-5
            )


def test_dynamo_export_auto_lowering_report_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    result = export_onnx(
        model, input_shape=(1, 3, 16, 16), path=tmp_path / "out" / "vgg.onnx", lowering="auto",
        threads=1, batch=2, repeats=2, candidates=("dense", "gather", "slots", "fold"),
        metadata={"mac_ratio": 0.5},
    )  # fmt: skip
    assert result.exporter == "dynamo" and result.opset == 18 and result.simplifier == "onnxsim"
    for layer in result.layers:  # the whole-graph check may override the per-layer choice
        per_layer = fastest_form(layer.fastest_ms)
        assert (
            layer.form
            == {"auto": per_layer, "gather": "gather", "dense": "dense"}[result.network_plan]
        )
        assert sum(layer.kernels_per_channel) == layer.kernels
    assert result.speed_margin == 0.05 and result.speed_check
    loaded = ExportResult.load(result.report_path)
    assert loaded.to_dict() == result.to_dict()
    meta = read_metadata(result.onnx_path)
    assert meta["settings"] == {"mac_ratio": 0.5} and meta["version"] == result.tool_version
    assert meta["parity"]["relative_diff"] == result.parity.relative_diff
    assert meta["layers"]["features.3"]["kernels_per_channel"] == (
        model.get_submodule("features.3").kernels_per_channel.tolist()
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vgg.onnx", "vgg.report.json"]
    json.loads((tmp_path / "out" / "vgg.report.json").read_text())


def test_original_model_exports_and_dense_ships_original_convs(tmp_path):
    torch.manual_seed(0)
    original = randomize_batchnorm(ResNet())
    x = _inputs()
    plain = export_onnx(original, input_shape=(3, 16, 16), path=tmp_path / "orig.onnx",
                        exporter="legacy", parity_inputs=x)  # fmt: skip
    assert plain.layers == [] and plain.parity.passed
    model = gdwsify(original, 0.4)
    kept = export_onnx(model, input_shape=(3, 16, 16), path=tmp_path / "kept.onnx",
                       lowering="dense", original=original, exporter="legacy",
                       parity_inputs=x, simplify=False)  # fmt: skip
    assert kept.simplifier == "none" and kept.macs["shipped"] == kept.macs["original"]
    with OrtRunner(kept.onnx_path) as runner:  # the original convs, not the approximation
        got = runner.predict(x.numpy())
    np.testing.assert_allclose(got, original(x).detach().numpy(), atol=1e-5)
    assert np.abs(got - model(x).detach().numpy()).max() > 1e-3


def test_fixed_batch_export(tmp_path):
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    result = export_onnx(model, input_shape=(3, 16, 16), path=tmp_path / "m.onnx",
                         lowering="slots", exporter="legacy", dynamic_batch=False, batch=4,
                         parity_inputs=_inputs(5))  # fmt: skip
    dim = onnx.load(result.onnx_path).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 4 and result.parity.n_inputs == 5


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    real_lower = pipeline.lower_model

    def broken_lower(*args, **kwargs):
        lowered = real_lower(*args, **kwargs)
        with torch.no_grad():
            lowered.classifier.bias += 0.1
        return lowered

    monkeypatch.setattr(pipeline, "lower_model", broken_lower)
    with pytest.raises(ParityError, match="does not match"):
        export_onnx(model, input_shape=(3, 16, 16), path=tmp_path / "m.onnx",
                    lowering="gather", exporter="legacy")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lowering": "fastest"}, "unknown lowering"),
        ({"input_shape": (16, 16)}, "input_shape"),
        ({"exporter": "onnxscript"}, "exporter"),
        ({"batch": 0}, "batch"),
        ({"parity_inputs": torch.rand(2, 3, 8, 8)}, "parity_inputs"),
        ({"original": nn.Sequential()}, "original model has no layer"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    model = gdwsify(VGG(), 0.1)
    args = {"input_shape": (3, 16, 16), "path": tmp_path / "m.onnx", **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        export_onnx(model, **args)


def test_export_options_equal_their_keywords(tmp_path):
    from gdws_export.lowering.options import ExportOptions

    torch.manual_seed(0)
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    common = {"input_shape": (3, 16, 16), "parity_inputs": _inputs()}
    options = ExportOptions(lowering="slots", exporter="legacy", align=8)
    by_options = export_onnx(model, options, path=tmp_path / "a.onnx", **common)
    by_keywords = export_onnx(
        model, path=tmp_path / "b.onnx", lowering="slots", exporter="legacy", align=8, **common
    )
    assert by_options.forms == by_keywords.forms and by_options.align == 8
    assert onnx.load(by_options.onnx_path).graph == onnx.load(by_keywords.onnx_path).graph
    overridden = export_onnx(model, options, path=tmp_path / "c.onnx", lowering="gather", **common)
    assert set(overridden.forms.values()) == {"gather"}
    with pytest.raises(TypeError, match="lowerings"):
        ExportOptions.resolve(None, lowerings="gather")
