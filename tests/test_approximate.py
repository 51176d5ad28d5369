"""Network-level approximate: model untouched, report honest, budgets met, bad input refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gdws_export.gdws.approximate import ApproximationReport, approximate
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.decomposition import channel_svd, error_values


class SmallNet(nn.Module):
    """A CIFAR-like net with a residual block, a 1x1 shortcut, a depthwise conv and BN."""

    input_shape = (3, 16, 16)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(16, 32, 1, stride=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.conv3 = nn.Conv2d(32, 48, (3, 5), padding=(1, 2), groups=2)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(y) + self.shortcut(x)
        y = torch.relu(self.conv3(self.dw(y)))
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model


def test_beta_zero_is_exact_and_the_input_model_is_untouched(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(3, 3, 16, 16)
    new, report = approximate(net, beta=0.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, GDWSConv2d) for m in net.modules())
    assert torch.allclose(new(x), net(x), atol=1e-5)
    status = {layer.name: layer.status for layer in report.layers}
    assert status["stem"] == status["shortcut"] == status["dw"] == "skipped"
    # Full rank GDWS costs more than these convs, so they are kept, and the report says why.
    assert status["conv1"] == status["conv2"] == "original"
    assert "GDWS would cost" in report.layers[1].reason


def test_report_matches_the_model(net):
    new, report = approximate(net, beta=2.0)
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert reasons["stem"].startswith("first conv")
    assert reasons["shortcut"].startswith("1x1")
    assert reasons["dw"].startswith("depthwise")
    replaced = {layer.name for layer in report.replaced}
    assert replaced and replaced == {n for n, m in new.named_modules() if isinstance(m, GDWSConv2d)}
    for layer in report.replaced:
        module = new.get_submodule(layer.name)
        assert layer.kernels == module.kernels
        assert layer.kernels_per_channel == module.kernels_per_channel.tolist()
        assert layer.weighted_error == pytest.approx(module.weighted_error)
        assert layer.weighted_error <= 2.0
        assert layer.macs_after == module.macs_per_pixel * layer.pixels < layer.macs_before
        assert layer.params_after == sum(p.numel() for p in module.parameters())
    assert ApproximationReport.from_dict(report.to_dict()).to_dict() == report.to_dict()
    assert "conv2" in report.table()


def test_per_image_macs_use_output_size(net):
    _, report = approximate(net, beta=2.0)
    conv1 = next(layer for layer in report.layers if layer.name == "conv1")
    assert conv1.pixels == 8 * 8  # stride 2 on 16x16
    assert conv1.macs_before == 32 * 16 * 9 * 64


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.8])
def test_mac_ratio_is_met(net, ratio):
    new, report = approximate(net, mac_ratio=ratio)
    assert report.macs_after <= ratio * report.macs_before
    assert report.achieved_mac_ratio > ratio * 0.8  # the budget is spent, not wasted
    x = torch.rand(2, 3, 16, 16)
    assert new(x).shape == (2, 10)


def test_mac_ratio_one_keeps_every_original_conv(net):
    _, report = approximate(net, mac_ratio=1.0)
    assert {layer.status for layer in report.layers} == {"skipped", "original"}


def test_mac_ratio_spends_the_budget_on_the_best_error_per_mac(net):
    """Within the replaced layers, no dropped kernel removes more error per MAC than a kept one
    (apart from each layer's forced first kernel): the Lagrangian optimality of the greedy.
    Grouped convs buy one kernel per group at a time, so every group keeps as many."""
    _, report = approximate(net, mac_ratio=0.3)
    kept, dropped = [], []
    conv3 = next(layer for layer in report.layers if layer.name == "conv3")
    assert conv3.status == "gdws"
    assert sum(conv3.kernels_per_channel[:16]) == sum(conv3.kernels_per_channel[16:])
    for layer in report.replaced:
        if layer.groups > 1:
            continue
        conv = net.get_submodule(layer.name)
        values = error_values(channel_svd(conv.weight, conv.groups))
        cost = (
            conv.kernel_size[0] * conv.kernel_size[1] + conv.out_channels // conv.groups
        ) * layer.pixels
        counts = torch.tensor(layer.kernels_per_channel)
        keep = torch.arange(values.shape[1])[None, :] < counts[:, None]
        ratio = values / cost
        ratio.view(-1)[torch.argmax(values)] = math.inf  # forced kernel
        kept.append(ratio[keep])
        dropped.append(ratio[~keep])
    assert float(torch.cat(kept).min()) >= float(torch.cat(dropped).max()) * (1 - 1e-9)


@pytest.mark.parametrize("align", [4, 8])
def test_aligned_mac_budget_counts_the_padding(net, align):
    """With `align` the MAC budget holds for the kernels the lowering runs (each layer's count
    padded to a multiple of `align`; conv3 has 2 groups, padded alike), and every layer fills
    its last block with real kernels."""
    ratio = 0.3
    _, report = approximate(net, mac_ratio=ratio, align=align)
    assert report.replaced
    padded = 0
    for layer in report.layers:
        if layer.status == "original":
            padded += layer.macs_after
        if layer.status != "gdws":
            continue
        kernels = math.ceil(layer.kernels / align) * align
        padded += layer.macs_after // layer.kernels * kernels
        assert layer.kernels % align == 0 or layer.kernels == layer.full_rank_kernels, layer
    assert padded <= ratio * report.macs_before


@pytest.mark.parametrize("beta", [2.0, 8.0, 20.0])
def test_aligned_beta_adds_the_next_best_kernels(net, beta):
    """With `beta`, a plain conv keeps LEGO's kernels plus the next-best ones up to a multiple
    of `align`: the error bound still holds, and every channel keeps at least as many."""
    _, plain = approximate(net, beta=beta)
    _, aligned = approximate(net, beta=beta, align=8)
    by_name = {layer.name: layer for layer in plain.layers}
    checked = 0
    for layer in aligned.replaced:
        assert layer.weighted_error <= beta
        before = by_name[layer.name]
        if layer.groups == 1 and before.status == "gdws":
            assert layer.kernels % 8 == 0 or layer.kernels == layer.full_rank_kernels
            after_counts = torch.tensor(layer.kernels_per_channel)
            assert (after_counts >= torch.tensor(before.kernels_per_channel)).all()
            assert layer.weighted_error <= before.weighted_error
            checked += 1
    assert checked


def test_too_small_mac_ratio_says_so(net):
    with pytest.raises(ValueError, match="too small"):
        approximate(net, mac_ratio=1e-4)


def test_alphas_change_the_choice(net):
    _, plain = approximate(net, beta=1.0)
    alphas = {"conv1": torch.ones(16), "conv2": torch.ones(32), "conv3": torch.ones(32)}
    alphas["conv2"][:16] = 100.0  # the first 16 channels of conv2 matter much more
    _, weighted = approximate(net, beta=1.0, alphas=alphas)
    conv2 = next(layer for layer in weighted.layers if layer.name == "conv2")
    base = next(layer for layer in plain.layers if layer.name == "conv2")
    assert weighted.weighted and not plain.weighted
    assert sum(conv2.kernels_per_channel[:16]) > sum(base.kernels_per_channel[:16])


def test_include_and_exclude(net):
    _, report = approximate(net, beta=2.0, include=["conv*"], exclude=["conv3"])
    status = {layer.name: layer.status for layer in report.layers}
    assert status["conv3"] == "skipped" and status["conv1"] == "gdws"
    with pytest.raises(ValueError, match="matches no conv"):
        approximate(net, beta=2.0, exclude=["layer9.*"])


def test_deterministic(net):
    a, report_a = approximate(net, mac_ratio=0.4)
    b, report_b = approximate(net, mac_ratio=0.4)
    assert report_a.to_dict() == report_b.to_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_without_approximable_convs_comes_back_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten())
    new, report = approximate(model, beta=1.0, input_shape=(3, 8, 8))
    assert [layer.status for layer in report.layers] == ["skipped", "skipped"]
    assert not report.replaced
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(new(x), model(x))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    _, report = approximate(mlp, beta=1.0)
    assert report.layers == []


@pytest.mark.parametrize(
    "kwargs, message",
    [({}, "exactly one"), ({"beta": 1.0, "mac_ratio": 0.5}, "exactly one"),
     ({"beta": -1.0}, "beta"), ({"beta": math.nan}, "beta"), ({"beta": math.inf}, "beta"),
     ({"mac_ratio": 0.0}, "mac_ratio"), ({"mac_ratio": 1.5}, "mac_ratio"),
     ({"mac_ratio": math.nan}, "mac_ratio"),
     ({"beta": 1.0, "alphas": {"conv1": torch.ones(16)}}, "no entry for layer"),
     ({"beta": 1.0, "alphas": {"conv1": torch.ones(3), "conv2": torch.ones(32), "conv3": torch.ones(32)}}, "conv1"),
     ({"beta": 1.0, "alphas": {"conv1": -torch.ones(16), "conv2": torch.ones(32), "conv3": torch.ones(32)}}, "negative"),
     ({"beta": 1.0, "alphas": {"nope": torch.ones(3)}}, "not a conv of this model"),
     ({"beta": 1.0, "include": ["nothing"]}, "matches no conv"),
     ({"beta": 1.0, "align": 0}, "align"), ({"beta": 1.0, "align": 2.0}, "align")],
)  # fmt: skip
def test_bad_input_is_a_value_error(net, kwargs, message):
    with pytest.raises(ValueError, match=message):
        approximate(net, **kwargs)


def test_nan_weight_names_the_layer(net):
    with torch.no_grad():
        net.conv2.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="conv2"):
        approximate(net, beta=1.0)


def test_mac_ratio_needs_an_input_shape():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="input_shape"):
        approximate(model, mac_ratio=0.5)
    _, report = approximate(model, mac_ratio=0.5, input_shape=(3, 10, 10))
    assert report.layers[1].pixels == 36


def test_failing_forward_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(Exception, match="forward failed"):
        approximate(model, beta=1.0, input_shape=(3, 8, 8))


def test_mac_ratio_without_approximable_convs_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1))
    new, report = approximate(model, mac_ratio=0.5, input_shape=(3, 8, 8))
    assert not report.replaced and report.achieved_mac_ratio == 1.0


def test_new_layers_follow_the_models_mode(net):
    new, _ = approximate(net, beta=2.0)
    assert not any(m.training for m in new.modules())
