"""Plain depthwise-separable baseline: one kernel per channel, layer choice under a MAC ratio."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdws_export.baselines import depthwise_separable
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.decomposition import channel_blocks


class Three(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.narrow = nn.Conv2d(32, 1, 3, padding=1)  # one output: separable costs more
        self.input_shape = (3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow(torch.relu(self.b(torch.relu(self.a(self.stem(x))))))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return Three().eval()


def test_every_cheaper_layer_becomes_rank_one_per_channel():
    model = _model()
    dws, report = depthwise_separable(model)
    status = {layer.name: layer.status for layer in report.layers}
    assert status == {"stem": "skipped", "a": "gdws", "b": "gdws", "narrow": "original"}
    for name in ("a", "b"):
        layer = dws.get_submodule(name)
        assert isinstance(layer, GDWSConv2d)
        assert layer.kernels_per_channel.tolist() == [1] * layer.in_channels
        # Each channel block is its best rank-1 approximation.
        blocks = channel_blocks(model.get_submodule(name).weight.double())
        u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
        rank_one = u[:, :, :1] * s[:, None, :1] @ vh[:, :1, :]
        torch.testing.assert_close(channel_blocks(layer.dense_weight().double()), rank_one,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    assert isinstance(dws.narrow, nn.Conv2d) and isinstance(model.a, nn.Conv2d)
    x = torch.rand(2, 3, 8, 8)
    assert dws(x).shape == model(x).shape
    a = next(layer for layer in report.layers if layer.name == "a")
    assert a.macs_after == 16 * (9 + 32) * 64 and a.macs_before == 32 * 16 * 9 * 64


def test_mac_ratio_converts_the_least_sensitive_layers_first():
    model = _model()
    ones_a, ones_b = torch.ones(16, dtype=torch.float64), torch.ones(32, dtype=torch.float64)
    # Layer b converted alone gets close to the ratio; a very sensitive layer b is kept.
    _, report = depthwise_separable(model, mac_ratio=0.99, alphas={"a": ones_a, "b": 1e6 * ones_b,
                                                                 "narrow": torch.ones(32)})  # fmt: skip
    status = {layer.name: layer.status for layer in report.layers}
    assert status["a"] == "gdws" and status["b"] == "original"
    assert report.achieved_mac_ratio <= 0.99
    _, report = depthwise_separable(model, mac_ratio=0.99, alphas={"a": 1e6 * ones_a, "b": ones_b,
                                                                 "narrow": torch.ones(32)})  # fmt: skip
    status = {layer.name: layer.status for layer in report.layers}
    assert status["a"] == "original" and status["b"] == "gdws"


def test_unreachable_ratio_converts_everything_and_says_so():
    _, report = depthwise_separable(_model(), mac_ratio=0.01)
    assert [layer.status for layer in report.layers] == ["skipped", "gdws", "gdws", "original"]
    assert report.achieved_mac_ratio > 0.01


def test_bad_ratio():
    with pytest.raises(InvalidInputError):
        depthwise_separable(_model(), mac_ratio=1.5)
