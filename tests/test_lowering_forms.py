"""Every lowering form computes exactly what the GDWS conv computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.lowering.forms import (
    SlotsGDWS,
    dense_conv,
    fold_copies,
    kernel_table,
    lower_layer,
    pad_kernels,
)

# (conv settings, input H, W): grouped, strided, dilated, padding modes, non-square kernels.
CONVS = [
    (dict(in_channels=8, out_channels=12, kernel_size=3, padding=1), (9, 9)),
    (dict(in_channels=8, out_channels=12, kernel_size=(3, 5), padding=(1, 2), stride=2), (11, 13)),
    (dict(in_channels=8, out_channels=6, kernel_size=3, dilation=2, padding=2, groups=2), (10, 7)),
    (
        dict(
            in_channels=6,
            out_channels=4,
            kernel_size=3,
            padding="same",
            padding_mode="reflect",
            groups=2,
            bias=False,
        ),
        (8, 8),
    ),  # fmt: skip
    (
        dict(
            in_channels=12,
            out_channels=9,
            kernel_size=(1, 3),
            stride=(2, 1),
            groups=3,
            padding_mode="circular",
            padding=(0, 1),
        ),
        (7, 9),
    ),  # fmt: skip
    (
        dict(in_channels=5, out_channels=16, kernel_size=3, padding=1, padding_mode="replicate"),
        (6, 6),
    ),  # fmt: skip
]
BETAS = [0.0, 1.0]  # full rank; a mix of 0 to Kh*Kw kernels per channel


def _gdws(settings: dict, beta: float) -> GDWSConv2d:
    return GDWSConv2d.from_conv(nn.Conv2d(**settings), beta=beta).eval()


@pytest.mark.parametrize("settings,hw", CONVS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("form", ["gather", "uniform", "slots", "dense"])
def test_layer_forms_equal_gdws(settings, hw, beta, form, align=8):
    gdws = _gdws(settings, beta)
    x = torch.randn(3, settings["in_channels"], *hw)
    lowered = lower_layer(gdws, form, align=align).eval()
    torch.testing.assert_close(lowered(x), gdws(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("settings,hw", [c for c in CONVS if c[0].get("groups", 1) == 1])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("slots,align", [(1, 1), (1, 8), (2, 8), (3, 16)])
def test_fold_forms_equal_gdws_on_repeated_input(settings, hw, beta, slots, align):
    gdws = _gdws(settings, beta)
    x = torch.randn(2, settings["in_channels"], *hw)
    form = "fold" if slots == 1 else f"fold-{slots}"
    consumer = lower_layer(gdws, form, align=align)
    assert consumer.source_index.numel() % align == 0
    torch.testing.assert_close(consumer(x[:, consumer.source_index]), gdws(x), rtol=1e-5, atol=1e-5)
    # A copy never holds more than `slots` kernels, and channels without kernels vanish.
    assert len(consumer.depthwise) <= slots
    counts = gdws.kernels_per_channel
    kept = set(consumer.source_index[: int(fold_copies(gdws, slots).sum())].tolist())
    assert kept == set(torch.nonzero(counts).flatten().tolist())


def test_fold_one_slot_is_depthwise_plus_pointwise():
    gdws = _gdws(CONVS[0][0], 0.3)
    consumer = lower_layer(gdws, "fold")
    assert len(consumer.depthwise) == 1
    dw = consumer.depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels == gdws.kernels


def test_kernel_table_drops_group_padding_kernels():
    gdws = _gdws(CONVS[2][0], 1.0)
    table = kernel_table(gdws)
    assert table.channel.numel() == gdws.kernels
    assert torch.equal(torch.bincount(table.channel, minlength=8), gdws.kernels_per_channel)


@pytest.mark.parametrize("settings,hw", CONVS[:3])
def test_pad_kernels_keeps_outputs_and_aligns(settings, hw):
    gdws = _gdws(settings, 0.3)
    padded = pad_kernels(gdws, 16)
    assert padded.depthwise.out_channels % 16 == 0
    assert padded.kernels == gdws.kernels
    x = torch.randn(2, settings["in_channels"], *hw)
    torch.testing.assert_close(padded(x), gdws(x), rtol=1e-5, atol=1e-5)


def test_uniform_and_slots_need_no_gather():
    gdws = _gdws(CONVS[0][0], 0.3)
    assert not (gdws.kernels_per_channel == 1).all()  # the reference form would gather
    for form in ("uniform", "slots"):
        assert not any(isinstance(m, GDWSConv2d) for m in lower_layer(gdws, form).modules())


def test_dense_conv_uses_gdws_weights_and_original_when_given():
    conv = nn.Conv2d(8, 12, 3, padding=1)
    gdws = GDWSConv2d.from_conv(conv, beta=2.0)
    torch.testing.assert_close(dense_conv(gdws).weight, gdws.dense_weight())
    grouped = _gdws(CONVS[4][0], 0.3)
    torch.testing.assert_close(dense_conv(grouped).weight, grouped.dense_weight())
    shipped = lower_layer(gdws, "dense", original=conv)
    assert shipped is not conv and torch.equal(shipped.weight, conv.weight)


def test_unknown_form_and_bad_copies_raise():
    gdws = _gdws(CONVS[0][0], 0.3)
    with pytest.raises(InvalidInputError, match="unknown lowering form"):
        lower_layer(gdws, "nope")
    with pytest.raises(InvalidInputError, match="copies"):
        SlotsGDWS(gdws, torch.zeros(8, dtype=torch.long))
