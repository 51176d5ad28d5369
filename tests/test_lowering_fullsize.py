"""Parity on full-size CIFAR VGG-16-BN, ResNet-18 and PreActResNet-18 from the registry.

Each export mixes the forms across layers (layer i gets form i mod 6, fold forms where a fold
is possible), so one graph per model and setting exercises every lowering. The models are
freshly initialised (random weights, non-trivial BatchNorm statistics); the inputs are real
images (Fashion-MNIST, padded to 32 x 32 and repeated over 3 channels).
"""

from __future__ import annotations

import pytest
import torch
from _lowering_nets import randomize_batchnorm, real_images

from gdws_export import approximate, create_model
from gdws_export.lowering.export import export_model
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.lower import gdws_layers, lower_model
from gdws_export.lowering.parity import check_parity
from gdws_export.runtimes import OrtRunner

pytestmark = pytest.mark.slow
FORMS = ["gather", "fold", "slots", "fold-2", "uniform", "dense"]
NON_FOLD = ["gather", "slots", "uniform", "dense"]
# (model, approximate() setting): two betas and a MAC budget. Random weights have flat
# spectra, so these betas keep 0.3 to 8 kernels per channel depending on the layer.
CASES = [("vgg16_bn", {"beta": 20.0}), ("resnet18", {"beta": 10.0}),
         ("preact_resnet18", {"mac_ratio": 0.5})]  # fmt: skip
_MODELS: dict = {}


def _gdws_model(name: str, setting: dict):
    """Built once per module: approximating a full-size net takes seconds."""
    key = (name, *setting.items())
    if key not in _MODELS:
        torch.manual_seed(0)
        model = randomize_batchnorm(create_model(name))
        _MODELS[key] = approximate(model, input_shape=(3, 32, 32), **setting)[0].eval()
    return _MODELS[key]


@pytest.fixture(scope="module")
def inputs():
    return real_images(4)


@pytest.mark.parametrize("name,setting", CASES, ids=[c[0] for c in CASES])
def test_mixed_forms_match_pytorch(name, setting, inputs):
    model = _gdws_model(name, setting)
    sites, _ = find_fold_sites(model)
    forms = {}
    for i, layer in enumerate(gdws_layers(model)):
        form = FORMS[i % len(FORMS)]
        forms[layer] = form if layer in sites or not form.startswith("fold") else NON_FOLD[i % 4]
    assert len(set(forms.values())) == len(FORMS)
    lowered = lower_model(model, forms, sites=sites, align=8)
    proto = export_model(lowered, torch.from_numpy(inputs[:1]), exporter="legacy")
    with OrtRunner(proto.SerializeToString()) as runner:
        report = check_parity(model, runner, inputs, first_alone=True)
    assert report.relative_diff < 1e-4 and report.top1_agreement == 1.0


def test_resnet18_dynamo_export(inputs):
    # The dynamo exporter once exported ResNet-18 at 0 % accuracy (pytorch#169178).
    model = _gdws_model(*CASES[1])
    sites, _ = find_fold_sites(model)
    lowered = lower_model(model, {n: "fold" for n in sites}, sites=sites, align=8)
    proto = export_model(lowered, torch.from_numpy(inputs[:2]), exporter="dynamo")
    with OrtRunner(proto.SerializeToString()) as runner:
        report = check_parity(model, runner, inputs, first_alone=True)
    assert report.relative_diff < 1e-4 and report.top1_agreement == 1.0
