"""GDWSConv2d: exact at full rank for every Conv2d variant, differentiable, honest about cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdws_export.gdws.conv import GDWSConv2d, conv_macs_per_pixel

CONVS = {
    "plain": dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    "stride2_no_bias": dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1, bias=False),
    "tuple_stride_padding": dict(in_channels=6, out_channels=10, kernel_size=3, stride=(2, 1), padding=(0, 2)),
    "same": dict(in_channels=6, out_channels=10, kernel_size=(3, 5), padding="same"),
    "same_even_kernel": dict(in_channels=6, out_channels=10, kernel_size=4, padding="same"),
    "valid": dict(in_channels=6, out_channels=10, kernel_size=5, padding="valid"),
    "dilation": dict(in_channels=6, out_channels=10, kernel_size=3, padding=2, dilation=2),
    "dilation_tuple": dict(in_channels=6, out_channels=10, kernel_size=3, padding=(1, 3), dilation=(1, 3)),
    "reflect": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1, padding_mode="reflect"),
    "replicate": dict(in_channels=6, out_channels=10, kernel_size=3, padding=(2, 1), padding_mode="replicate"),
    "circular": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1, padding_mode="circular"),
    "non_square": dict(in_channels=6, out_channels=10, kernel_size=(1, 3), padding=(0, 1)),
    "m_below_taps": dict(in_channels=6, out_channels=4, kernel_size=3, padding=1),
    "grouped": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, groups=4),
    "grouped_m_below_taps": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=2, bias=False),
    "grouped_strided_reflect": dict(in_channels=6, out_channels=9, kernel_size=3, stride=2, padding=1, groups=3, padding_mode="reflect"),
}  # fmt: skip


def _float32_tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, float(reference.detach().abs().max()))


@pytest.mark.parametrize("name", CONVS)
def test_full_rank_reproduces_the_conv(name):
    conv = nn.Conv2d(**CONVS[name])
    gdws = GDWSConv2d.from_conv(conv, beta=0.0)
    x = torch.randn(2, conv.in_channels, 13, 11)
    expected = conv(x)
    assert torch.allclose(gdws(x), expected, rtol=0, atol=_float32_tolerance(expected))
    rank = min(conv.out_channels // conv.groups, conv.kernel_size[0] * conv.kernel_size[1])
    assert gdws.kernels_per_channel.shape == (conv.in_channels,)
    assert gdws.kernels_per_channel.dtype == torch.long
    assert int(gdws.kernels_per_channel.max()) <= rank
    assert gdws.weighted_error < 1e-10


@pytest.mark.parametrize("name", CONVS)
def test_weighted_error_matches_the_reconstructed_weight(name):
    conv = nn.Conv2d(**CONVS[name]).double()
    alpha = torch.rand(conv.in_channels, dtype=torch.float64) + 0.5
    budget = max(1, conv.in_channels)
    gdws = GDWSConv2d.from_conv(conv, max_kernels=budget, alpha=alpha)
    diff = (gdws.dense_weight() - conv.weight).detach()
    groups = conv.groups
    m, c_per_group = conv.out_channels // groups, conv.in_channels // groups
    per_channel = diff.reshape(groups, m, c_per_group, -1).pow(2).sum(dim=(1, 3)).reshape(-1)
    assert gdws.weighted_error == pytest.approx(float((alpha * per_channel).sum()), rel=1e-9)
    assert gdws.kernels <= budget
    # The module computes exactly the conv with its own dense weight.
    x = torch.randn(1, conv.in_channels, 9, 10, dtype=torch.float64)
    dense = nn.functional.conv2d(
        nn.functional.pad(x, conv._reversed_padding_repeated_twice, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode),
        gdws.dense_weight(), conv.bias, conv.stride, 0, conv.dilation, groups,
    )  # fmt: skip
    assert torch.allclose(gdws(x), dense, atol=1e-10)


def test_macs_and_kernel_counts():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    gdws = GDWSConv2d.from_conv(conv, max_kernels=20)
    assert gdws.kernels == 20 == int(gdws.kernels_per_channel.sum())
    assert gdws.macs_per_pixel == 20 * (9 + 32)
    assert conv_macs_per_pixel(conv) == 32 * 16 * 9
    assert gdws.depthwise.weight.shape == (20, 1, 3, 3)
    assert gdws.pointwise.weight.shape == (32, 20, 1, 1)


def test_grouped_padding_kernels_are_counted_in_macs():
    conv = nn.Conv2d(4, 8, 3, groups=2)
    counts = torch.tensor([3, 2, 1, 0])  # group 0 keeps 5 kernels, group 1 keeps 1
    gdws = GDWSConv2d.from_conv(conv, kernels_per_channel=counts)
    assert gdws.kernels == 6
    assert gdws.depthwise.out_channels == 10  # both groups padded to 5
    assert gdws.macs_per_pixel == 10 * (9 + 4)


def test_one_kernel_per_channel_needs_no_gather():
    conv = nn.Conv2d(4, 8, 3)
    gdws = GDWSConv2d.from_conv(conv, kernels_per_channel=torch.ones(4, dtype=torch.long))
    assert not gdws._gather
    x = torch.randn(1, 4, 6, 6)
    assert gdws(x).shape == conv(x).shape


def test_gradients_flow_to_input_and_parameters():
    conv = nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect").double()
    gdws = GDWSConv2d.from_conv(conv, max_kernels=6)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gdws, (x,))
    gdws(x).sum().backward()
    assert gdws.depthwise.weight.grad is not None and gdws.pointwise.weight.grad.abs().sum() > 0


def test_lower_rank_means_fewer_kernels_and_more_error():
    conv = nn.Conv2d(16, 32, 3)
    errors, kernels = [], []
    for budget in [10, 40, 80, 144]:
        gdws = GDWSConv2d.from_conv(conv, max_kernels=budget)
        errors.append(gdws.weighted_error)
        kernels.append(gdws.kernels)
    assert kernels == sorted(kernels) and errors == sorted(errors, reverse=True)


def test_depthwise_conv_is_refused():
    with pytest.raises(ValueError, match="depthwise"):
        GDWSConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=8), beta=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"beta": 0.1, "max_kernels": 3}, {"beta": 0.1, "kernels_per_channel": torch.ones(4)}],
)
def test_exactly_one_constraint(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        GDWSConv2d.from_conv(nn.Conv2d(4, 8, 3), **kwargs)


def test_bad_kernel_counts_are_refused():
    with pytest.raises(ValueError, match="kernels_per_channel"):
        GDWSConv2d.from_conv(nn.Conv2d(4, 8, 3), kernels_per_channel=torch.tensor([10, 0, 0, 0]))


@pytest.mark.parametrize("name", ["plain", "grouped_strided_reflect", "same_even_kernel"])
def test_to_dense_computes_the_same_function(name):
    conv = nn.Conv2d(**CONVS[name])
    gdws = GDWSConv2d.from_conv(conv, max_kernels=5).eval()
    dense = gdws.to_dense()
    x = torch.randn(2, conv.in_channels, 9, 8)
    assert isinstance(dense, nn.Conv2d) and not dense.training
    assert torch.allclose(dense(x), gdws(x), atol=1e-5)
