"""Fold sites found with torch.fx, and folded models equal to the GDWS model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _lowering_nets import VGG, ResNet, gdwsify, randomize_batchnorm
from torch import nn

from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.lowering.fold import expand_outputs, find_fold_sites
from gdws_export.lowering.lower import gdws_layers, lower_model


def test_vgg_every_gdws_layer_folds_through_bn_relu_and_pool():
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    sites, reasons = find_fold_sites(model)
    assert set(sites) == set(gdws_layers(model)) and not reasons
    # features.7 reads conv features.3 through its BatchNorm, a ReLU and a max pool.
    site = sites["features.7"]
    assert site.producer == "features.3" and site.batchnorms == ("features.4",)


def test_resnet_folds_only_the_second_conv_of_each_block():
    model = gdwsify(randomize_batchnorm(ResNet()), 0.1)
    sites, reasons = find_fold_sites(model)
    assert set(sites) == {"layers.0.conv2", "layers.1.conv2"}
    assert sites["layers.1.conv2"].producer == "layers.1.conv1"
    assert sites["layers.1.conv2"].batchnorms == ("layers.1.bn1",)
    # The residual stream feeds the skip connection too.
    assert "also read elsewhere" in reasons["layers.0.conv1"]


def test_preact_resnet_folds_through_functional_relu():
    model = gdwsify(randomize_batchnorm(ResNet(preact=True)), 0.1)
    sites, _ = find_fold_sites(model)
    assert set(sites) == {"layers.0.conv2", "layers.1.conv2"}


class _Shared(nn.Module):
    """One BatchNorm called twice, and a conv whose input is the sum of two tensors."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn(self.conv0(x))))
        return self.conv2(self.bn(y) + 1.0)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv0(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace it
            y = -y
        return self.conv1(y)


def test_shared_modules_and_mixing_ops_block_folds():
    model = _Shared()
    for name in ("conv1", "conv2"):
        setattr(model, name, GDWSConv2d.from_conv(getattr(model, name), beta=0.1))
    sites, reasons = find_fold_sites(model)
    assert not sites
    assert "shared" in reasons["conv1"] and "conv2" in reasons


def test_untraceable_model_gets_no_fold_and_a_reason():
    model = _Untraceable()
    model.conv1 = GDWSConv2d.from_conv(model.conv1, beta=0.1)
    sites, reasons = find_fold_sites(model)
    assert not sites and "torch.fx" in reasons["conv1"]


@pytest.mark.parametrize("net", [VGG(), ResNet(), ResNet(preact=True)], ids=["vgg", "res", "pre"])
@pytest.mark.parametrize("form", ["fold", "fold-2", "fold-3"])
def test_folded_models_equal_gdws_model(net, form):
    model = gdwsify(randomize_batchnorm(net), 0.05)
    sites, _ = find_fold_sites(model)
    forms = {n: (form if n in sites else "slots") for n in gdws_layers(model)}
    lowered = lower_model(model, forms, sites=sites, align=8).eval()
    assert not any(isinstance(m, GDWSConv2d) for m in lowered.modules())
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-4, atol=1e-5)


def test_fold_widens_producer_and_batchnorm_and_drops_unused_channels():
    model = gdwsify(randomize_batchnorm(VGG()), 0.3)
    consumer = model.get_submodule("features.7")
    sites, _ = find_fold_sites(model)
    lowered = lower_model(model, {"features.7": "fold"}, sites=sites)
    producer, bn = lowered.get_submodule("features.3"), lowered.get_submodule("features.4")
    assert producer.out_channels == bn.num_features == consumer.kernels
    assert bn.num_features < 16 * consumer.kernels_per_channel.max()


def test_expand_outputs_repeats_channels():
    index = torch.tensor([2, 0, 0, 5])
    x = torch.rand(2, 4, 6, 6)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    torch.testing.assert_close(expand_outputs(conv, index)(x), conv(x)[:, index])
    gdws = GDWSConv2d.from_conv(conv, beta=0.5)
    torch.testing.assert_close(expand_outputs(gdws, index)(x), gdws(x)[:, index])
    bn = randomize_batchnorm(nn.BatchNorm2d(6))
    y = torch.rand(2, 6, 3, 3)
    torch.testing.assert_close(expand_outputs(bn, index)(y[:, index]), bn(y)[:, index])
