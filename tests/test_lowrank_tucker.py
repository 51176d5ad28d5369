"""Tucker-2 and two-factor convs: error identities, exactness on every conv variant, ONNX."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from _lowrank import (
    images,
    onnx_roundtrip,
    relative_gap,
    single_thread,  # noqa: F401 (an autouse fixture: importing it applies it)
)
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.lowrank import (
    ConvGeometry,
    LowRankConv2d,
    Tucker2Conv2d,
    lowrank_factors,
    tucker2_factors,
)

# Every conv variant the modules must reproduce exactly at full rank.
VARIANTS = [
    dict(),
    dict(padding=1),
    dict(stride=2, padding=(1, 2)),
    dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    dict(padding="same"),
    dict(padding="same", dilation=2, padding_mode="reflect"),
    dict(padding=1, padding_mode="circular", bias=False),
    dict(padding=(1, 2), padding_mode="reflect", stride=2),
    dict(padding="valid", bias=False),
    dict(padding=1, groups=2),
    dict(padding=1, groups=4, padding_mode="circular", stride=2),
]


def _conv(kernel=(3, 5), cin=8, cout=12, **kw) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, kernel, **kw).double()


def _error(module, conv) -> float:
    return float((module.dense_weight() - conv.weight.detach()).pow(2).sum())


@pytest.mark.parametrize("kernel", [(3, 3), (3, 5), (1, 3)])
@pytest.mark.parametrize("kw", VARIANTS, ids=[str(v) for v in VARIANTS])
def test_full_rank_reproduces_the_conv(kernel, kw):
    conv = _conv(kernel, **kw)
    x = torch.randn(2, 8, 11, 13, dtype=torch.float64)
    tucker = Tucker2Conv2d.from_conv(conv, tucker2_factors(conv.weight, conv.groups).max_ranks)
    low = LowRankConv2d.from_conv(conv, lowrank_factors(conv.weight, conv.groups).max_rank)
    for module in (tucker, low):
        assert torch.allclose(module(x), conv(x), atol=1e-12, rtol=1e-10)
        assert module.geometry == ConvGeometry.of(conv)
        assert module.core.stride == conv.stride and module.core.padding == conv.padding
        assert module.core.dilation == conv.dilation
        assert module.core.padding_mode == conv.padding_mode
        assert (module.restore.bias is None) == (conv.bias is None)
        assert module.weighted_error < 1e-12 * float(conv.weight.detach().pow(2).sum())


def test_two_factor_error_is_the_discarded_singular_values():
    for groups in (1, 2):
        conv = _conv(padding=1, groups=groups)
        factors = lowrank_factors(conv.weight, groups)
        blocks = conv.weight.detach().reshape(groups, 12 // groups, -1)
        s = torch.linalg.svdvals(blocks)
        for rank in range(1, factors.max_rank + 1):
            low = LowRankConv2d.from_conv(conv, rank, factors=factors)
            discarded = float(s[:, rank:].pow(2).sum())
            assert _error(low, conv) == pytest.approx(discarded, rel=1e-9, abs=1e-12)
            assert low.weighted_error == pytest.approx(discarded, rel=1e-9, abs=1e-12)


def test_two_factor_is_no_worse_than_any_other_rank_r_matrix():
    conv = _conv()
    w = conv.weight.detach().reshape(12, -1)
    low = LowRankConv2d.from_conv(conv, 3)
    for _ in range(20):  # random rank-3 competitors, fit by least squares on their row space
        basis = torch.linalg.qr(torch.randn(w.shape[1], 3, dtype=torch.float64)).Q
        assert _error(low, conv) <= float((w - w @ basis @ basis.T).pow(2).sum())


def test_hosvd_error_is_exact_and_within_the_bound():
    for groups in (1, 2):
        conv = _conv(groups=groups)
        factors = tucker2_factors(conv.weight, groups)
        errors, bound = factors.errors(), factors.bound()
        r0, r1 = factors.max_ranks
        assert (errors <= bound + 1e-10).all()
        for r_out in (1, 2, 5, r0):
            for r_in in (1, 3, r1):
                tucker = Tucker2Conv2d.from_conv(conv, (r_out, r_in), factors=factors)
                error = _error(tucker, conv)
                assert error == pytest.approx(float(errors[r_out - 1, r_in - 1]), abs=1e-10)
                assert error <= float(bound[r_out - 1, r_in - 1]) + 1e-10
        assert float(errors[-1, -1]) < 1e-12 * factors.energy


def test_hosvd_core_is_the_projection_of_the_weight():
    conv = _conv(cin=6, cout=5)
    f = tucker2_factors(conv.weight)
    u_out, u_in = f.u_out[0, :, :3], f.u_in[0, :, :2]
    core = torch.einsum("mo,mcxy,ci->oixy", u_out, conv.weight.detach(), u_in)
    tucker = Tucker2Conv2d.from_conv(conv, (3, 2), factors=f)
    assert torch.allclose(tucker.core.weight, core)
    assert torch.allclose(tucker.reduce.weight[:, :, 0, 0], u_in.T)


def test_alpha_weighting_minimizes_the_weighted_error():
    conv = _conv(cin=6, cout=10)
    alpha = torch.tensor([4.0, 1.0, 0.25, 2.0, 1.0, 9.0], dtype=torch.float64)
    weighted = LowRankConv2d.from_conv(conv, 2, alpha=alpha)
    plain = LowRankConv2d.from_conv(conv, 2)

    def werr(module):
        diff = (module.dense_weight() - conv.weight.detach()).pow(2).sum(dim=(0, 2, 3))
        return float((alpha * diff).sum())

    assert werr(weighted) == pytest.approx(weighted.weighted_error, rel=1e-9)
    assert werr(weighted) < werr(plain)
    tucker = Tucker2Conv2d.from_conv(conv, (3, 2), alpha=alpha)
    assert werr(tucker) == pytest.approx(tucker.weighted_error, rel=1e-9)
    alpha[2] = 0.0  # a channel whose error costs nothing is dropped, not divided by zero
    for module in (LowRankConv2d.from_conv(conv, 2, alpha=alpha),
                   Tucker2Conv2d.from_conv(conv, (3, 2), alpha=alpha)):  # fmt: skip
        assert torch.isfinite(module.dense_weight()).all()
        assert not module.dense_weight()[:, 2].any()
        assert werr(module) == pytest.approx(module.weighted_error, rel=1e-9)


def test_from_conv_keeps_dtype_device_mode_and_no_grad():
    conv = nn.Conv2d(8, 16, 3, padding=1).train(False)
    with torch.enable_grad():
        tucker = Tucker2Conv2d.from_conv(conv, (4, 3))
    assert tucker.core.weight.dtype == torch.float32 and not tucker.training
    assert tucker.core.weight.grad_fn is None and tucker.core.weight.requires_grad
    assert torch.equal(tucker.restore.bias, conv.bias)
    half = LowRankConv2d.from_conv(nn.Conv2d(8, 16, 3).to(torch.float16), 4)
    assert half.core.weight.dtype == torch.float16


def test_macs_and_shapes_of_each_stage():
    conv = _conv(stride=2, padding=1, groups=2)  # 8 -> 12, kernel 3x5
    tucker = Tucker2Conv2d.from_conv(conv, (3, 2))
    assert tucker.reduce.out_channels == 4 and tucker.core.out_channels == 6
    assert tucker.macs(100, 25) == 100 * 8 * 2 + 25 * (2 * 3 * 2 * 15 + 3 * 12)
    low = LowRankConv2d.from_conv(conv, 3)
    assert low.core.out_channels == 6 and low.macs(100, 25) == 25 * 3 * (8 * 15 + 12)


def test_bad_ranks_and_depthwise_are_refused():
    conv = _conv()
    with pytest.raises(InvalidInputError, match=r"\(r_out, r_in\)"):
        Tucker2Conv2d.from_conv(conv, (13, 2))
    with pytest.raises(InvalidInputError, match="rank"):
        LowRankConv2d.from_conv(conv, 0)
    with pytest.raises(InvalidInputError, match="pair"):
        Tucker2Conv2d.from_conv(conv, 3)
    with pytest.raises(InvalidInputError, match="depthwise"):
        Tucker2Conv2d.from_conv(nn.Conv2d(8, 8, 3, groups=8), (1, 1))
    with pytest.raises(InvalidInputError, match="nn.Conv2d"):
        LowRankConv2d.from_conv(nn.Linear(3, 4), 1)


EXPORTED = [
    dict(padding=1),
    dict(padding=(1, 2), padding_mode="reflect", stride=2, groups=2),
    dict(padding="same", dilation=2, padding_mode="circular"),
]


@pytest.mark.parametrize("kw", EXPORTED, ids=[str(v) for v in EXPORTED])
def test_modules_export_to_plain_conv_nodes(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, (3, 5), **kw).eval()
    x = images(4, channels=4, size=16)
    _, conv_ops = onnx_roundtrip(conv, x)
    for module in (Tucker2Conv2d.from_conv(conv, (3, 2)), LowRankConv2d.from_conv(conv, 3)):
        got, ops = onnx_roundtrip(module, x)
        assert relative_gap(got, module(x).detach()) <= 1e-4
        assert relative_gap(got, conv(x).detach()) > 1e-3  # a real approximation was exported
        assert ops == conv_ops  # Conv nodes and what the conv's own padding needs, nothing else


def test_the_package_is_a_math_floor():
    code = (
        "import sys, gdws_export.lowrank\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxsim',"
        " 'tensorrt') or m.startswith(('gdws_export.lowering', 'gdws_export.pipeline',"
        " 'gdws_export.harness', 'gdws_export.cli', 'gdws_export.runtimes'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
