"""Activation-aware GDWS: SVD in the metric of each channel's input patches, and the moments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.activations import activation_gains, input_moments, relative_gains
from gdws_export.gdws.approximate import approximate
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.decomposition import (
    RIDGE,
    channel_blocks,
    channel_svd,
    error_values,
    weighted_error,
)


def _patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(C, N, K) patches of every input channel, by explicit loops over output positions."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    ph, pw = conv.padding
    padded = F.pad(x, (pw, pw, ph, ph), mode=mode).double()
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    rows = []
    for top in range(0, padded.shape[2] - kh + 1, sh):
        for left in range(0, padded.shape[3] - kw + 1, sw):
            rows.append(padded[:, :, top : top + kh, left : left + kw].reshape(*x.shape[:2], -1))
    return torch.cat(rows).transpose(0, 1)  # (C, N * positions, K)


def _moment(patches: torch.Tensor) -> torch.Tensor:
    return patches.transpose(1, 2) @ patches / patches.shape[1]


def _ridge(moment: torch.Tensor) -> torch.Tensor:
    """The ridge channel_svd adds to each channel's moment (RIDGE x its mean per-tap energy)."""
    per_tap = moment.diagonal(dim1=1, dim2=2).mean(dim=1)
    return RIDGE * per_tap[:, None, None] * torch.eye(moment.shape[-1], dtype=moment.dtype)


def _rebuild(svd, counts: torch.Tensor) -> torch.Tensor:
    keep = (torch.arange(svd.rank)[None, :] < counts[:, None]).double()
    return torch.einsum("cmr,cr,crk->cmk", svd.u, svd.s * keep, svd.vh)


@pytest.fixture
def smooth_patches():
    """Patches of smooth images (strongly correlated taps), as convs see in practice."""
    torch.manual_seed(0)
    x = F.avg_pool2d(torch.randn(6, 4, 14, 14), 3, stride=1, padding=1)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    return conv, _patches(x, conv)


def test_exact_at_full_rank(smooth_patches):
    conv, patches = smooth_patches
    svd = channel_svd(conv.weight, 1, _moment(patches))
    blocks = channel_blocks(conv.weight.detach().double())
    full = torch.full((4,), svd.rank)
    torch.testing.assert_close(_rebuild(svd, full), blocks, rtol=1e-9, atol=1e-10)
    # GDW kernels are unit vectors (scale lives in the PW columns).
    torch.testing.assert_close(svd.vh.norm(dim=2), torch.ones(4, svd.rank, dtype=torch.float64))


def test_error_identity_is_the_mean_output_error(smooth_patches):
    """sum of dropped s^2 == mean over the data of ||(W_c - W'_c) p||^2 (+ the ridge term)."""
    conv, patches = smooth_patches
    moment = _moment(patches)
    svd = channel_svd(conv.weight, 1, moment)
    blocks = channel_blocks(conv.weight.detach().double())
    for counts in (torch.tensor([1, 2, 3, 9]), torch.tensor([2, 2, 2, 2]), torch.ones(4).long()):
        delta = blocks - _rebuild(svd, counts)
        output_error = (patches @ delta.transpose(1, 2)).pow(2).sum(dim=2).mean(dim=1).sum()
        ridge_error = torch.einsum("cmk,ckj,cmj->", delta, _ridge(moment), delta)
        expected = float(output_error + ridge_error)
        got = weighted_error(error_values(svd), counts)
        assert got == pytest.approx(expected, rel=1e-9)


def test_least_output_error_among_rank_g_approximations(smooth_patches):
    """Eckart-Young in the metric: no rank-g block (plain SVD truncation, random ones, small
    perturbations of ours) has a lower expected output error."""
    conv, patches = smooth_patches
    moment = _moment(patches)
    metric = moment + _ridge(moment)
    blocks = channel_blocks(conv.weight.detach().double())
    ours = channel_svd(conv.weight, 1, moment)
    plain = channel_svd(conv.weight, 1)

    def error(approx):  # per channel
        delta = blocks - approx
        return torch.einsum("cmk,ckj,cmj->c", delta, metric, delta)

    torch.manual_seed(1)
    for g in (1, 2, 3):
        counts = torch.full((4,), g)
        best = error(_rebuild(ours, counts))
        assert (best <= error(_rebuild(plain, counts)) + 1e-12).all()
        # strictly better somewhere: the metric is far from isotropic on smooth images
        assert (best < 0.9 * error(_rebuild(plain, counts))).any()
        for _ in range(20):
            left = torch.randn(4, blocks.shape[1], g, dtype=torch.float64)
            right = torch.randn(4, g, 9, dtype=torch.float64)
            assert (best <= error(left @ right) + 1e-12).all()
            # a nearby rank-g block: perturb both factors of ours
            u = ours.u[:, :, :g] * ours.s[:, None, :g] + 1e-3 * left
            v = ours.vh[:, :g] + 1e-3 * right
            assert (best <= error(u @ v) + 1e-12).all()


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("stride", [1, 2])
def test_input_moments_match_explicit_patches(padding_mode, stride):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1, stride=stride, padding_mode=padding_mode), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(2),
    )  # fmt: skip
    x = torch.rand(10, 1, 9, 9)
    model(x)
    model.train()
    moments = input_moments(model, (x, torch.zeros(10).long()), attack=None, samples=10,
                            batch_size=4)  # fmt: skip
    assert list(moments) == ["2"]  # the first conv is skipped, as in approximate
    assert model.training  # mode restored
    with torch.no_grad():
        hidden = torch.relu(model[0](x))
    torch.testing.assert_close(moments["2"], _moment(_patches(hidden, model[2])))


def test_adversarial_images_join_the_clean_ones():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 2, (8,))
    clean = input_moments(model, (x, y), attack=None, samples=8)["2"]
    mixed = input_moments(model, (x, y), eps=0.3, step_size=0.1, steps=3, samples=8)["2"]
    assert not torch.allclose(clean, mixed)
    # an average of clean and adversarial patches' moments: still positive semi-definite
    assert (torch.linalg.eigvalsh(mixed) > -1e-12).all()


def test_a_one_pixel_feature_map_needs_one_kernel_per_channel():
    """On a 1 x 1 map a padded 3x3 conv only uses its centre tap: activation-aware GDWS with
    one kernel per channel computes the same outputs; the paper's SVD does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1)).eval()
    x = torch.rand(16, 2, 1, 1)
    moments = input_moments(model, (x, torch.zeros(16).long()), attack=None, samples=16)
    conv, ones = model[2], torch.ones(6, dtype=torch.long)
    aware = GDWSConv2d._build(conv, channel_svd(conv.weight, 1, moments["2"]), ones, 0.0)
    plain = GDWSConv2d._build(conv, channel_svd(conv.weight, 1), ones, 0.0)
    with torch.no_grad():
        hidden = model[1](model[0](x))
        reference = conv(hidden)
        aware_error = (aware(hidden) - reference).abs().max()
        plain_error = (plain(hidden) - reference).abs().max()
    # not bit-exact: the ridge gives the unused taps a tiny weight in the metric
    assert aware_error < 1e-4 < 1e-2 < plain_error


def test_activation_gains_are_inverse_output_energy(smooth_patches):
    conv, patches = smooth_patches
    model = nn.Sequential(nn.Conv2d(4, 4, 1), conv)
    moment = _moment(patches)
    gains = activation_gains(model, {"1": moment})
    blocks = channel_blocks(conv.weight.detach().double())
    energy = torch.einsum("cmk,ckj,cmj->", blocks, moment + _ridge(moment), blocks)
    torch.testing.assert_close(gains["1"], torch.full((4,), 1 / float(energy),
                                                      dtype=torch.float64))  # fmt: skip


def test_bad_moments_are_refused(smooth_patches):
    conv, patches = smooth_patches
    model = nn.Sequential(nn.Conv2d(4, 4, 1), conv)
    with pytest.raises(InvalidInputError, match="expected \\(4, 9, 9\\)"):
        approximate(model, beta=0.1, input_moments={"1": torch.eye(9).expand(3, 9, 9)})
    with pytest.raises(InvalidInputError, match="no entry for layer '1'"):
        approximate(model, beta=0.1, input_moments={})
    with pytest.raises(InvalidInputError, match="not a conv of this model"):
        approximate(model, beta=0.1, input_moments={"1": _moment(patches), "9": None})
    with pytest.raises(InvalidInputError, match="NaN"):
        approximate(model, beta=0.1, input_moments={"1": torch.full((4, 9, 9), float("nan"))})
    with pytest.raises(InvalidInputError, match="positive semi-definite"):
        approximate(model, beta=0.1, input_moments={"1": -torch.eye(9).repeat(4, 1, 1)})


def test_relative_gains_are_inverse_weight_energy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3))
    gains = relative_gains(model)
    assert list(gains) == ["1", "2"]  # the first conv is skipped, as in approximate
    for name in gains:
        energy = float(model.get_submodule(name).weight.double().pow(2).sum())
        conv = model.get_submodule(name)
        torch.testing.assert_close(
            gains[name], torch.full((conv.in_channels,), 1 / energy, dtype=torch.float64)
        )
    # a layer's weighted error is then the fraction of its weight energy dropped
    _, report = approximate(model, beta=0.25, alphas=gains, input_shape=(1, 9, 9))
    assert all(0 < layer.weighted_error <= 0.25 for layer in report.replaced)
