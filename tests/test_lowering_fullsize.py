"""Parity on full-size CIFAR VGG-16, ResNet-18 and PreActResNet-18, every lowering form.

Each export mixes the forms across layers (layer i gets form i mod 6, fold forms where a fold
is possible), so one graph per model and beta exercises every lowering.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _lowering_nets import gdwsify, preact_resnet18, randomize_batchnorm, resnet18, vgg16

from gdws_export.lowering import export_onnx
from gdws_export.lowering.export import export_model
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.lower import gdws_layers, lower_model
from gdws_export.lowering.parity import check_parity
from gdws_export.runtimes import OrtRunner

pytestmark = pytest.mark.slow
NETS = {"vgg16": vgg16, "resnet18": resnet18, "preact_resnet18": preact_resnet18}
FORMS = ["gather", "fold", "slots", "fold-2", "uniform", "dense"]
NON_FOLD = ["gather", "slots", "uniform", "dense"]


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)


# Random weights have flat spectra: a relative beta of 0.3 keeps about 6 of 9 kernels per
# channel, 0.75 about 2 (the compression trained models reach at much smaller betas).
CASES = [("vgg16", 0.75), ("resnet18", 0.75), ("preact_resnet18", 0.3)]
_MODELS: dict = {}


def _gdws_model(net: str, beta: float):
    """Built once per module: the per-channel SVDs of full-size nets take seconds."""
    if (net, beta) not in _MODELS:
        torch.manual_seed(0)
        _MODELS[net, beta] = gdwsify(randomize_batchnorm(NETS[net]()), beta)
    return _MODELS[net, beta]


@pytest.mark.parametrize("net,beta", CASES)
def test_mixed_forms_match_pytorch(net, beta, inputs):
    model = _gdws_model(net, beta)
    sites, _ = find_fold_sites(model)
    forms = {}
    for i, name in enumerate(gdws_layers(model)):
        form = FORMS[i % len(FORMS)]
        forms[name] = form if name in sites or not form.startswith("fold") else NON_FOLD[i % 4]
    lowered = lower_model(model, forms, sites=sites, align=8)
    proto = export_model(lowered, torch.from_numpy(inputs[:1]), exporter="legacy")
    with OrtRunner(proto.SerializeToString()) as runner:
        report = check_parity(model, runner, inputs, first_alone=True)
    assert report.relative_diff < 1e-4 and report.top1_agreement == 1.0


def test_resnet18_dynamo_export_end_to_end(tmp_path, inputs):
    model = _gdws_model("resnet18", 0.75)
    result = export_onnx(
        model, input_shape=(3, 32, 32), path=tmp_path / "r18.onnx", lowering="fold",
        exporter="dynamo", parity_inputs=inputs,
    )  # fmt: skip
    assert result.parity.relative_diff < 1e-4 and result.parity.top1_agreement == 1.0
    assert result.simplifier == "onnxsim"
