"""Lowering forms: torch modules that compute exactly what one `GDWSConv2d` computes.

The exporter writes the graph a module's forward traces, so each form below is shaped to give
the ONNX graph we want for that layer:

- `gather` (the reference form): a channel Gather (each input channel repeated g_c times),
  a multiplier-1 depthwise conv over the G repeated channels, then the 1x1 conv. The Gather is
  left out when every channel keeps one kernel, in order.
- `uniform`: one grouped conv with groups = C and channel multiplier max_c g_c (channels with
  fewer kernels get zero kernels), then the 1x1 conv. No Gather; costs C * max g_c kernels.
- `slots`: kernel slot j (the j-th kernel of every channel that has one) is a multiplier-1
  depthwise conv over all C channels and its own 1x1 conv, and the slots' outputs are summed.
  No Gather and no copy: ONNX Runtime keeps every conv in its blocked (NCHWc) layout and fuses
  the sums into the convs, at the price of C * max g_c kernels, like `uniform`.

`gather`, `slots` and the fold forms can pad their channel counts to a multiple of `align`
with zero kernels: ONNX Runtime's fast CPU conv kernels need multiples of 8 (16 on AVX-512).
- `fold`: the Gather moves into the layer that produces the input (see `fold.py`), which then
  computes g_c copies of channel c; what is left here is a multiplier-1 depthwise conv and
  the 1x1 conv. `fold-S` folds only ceil(g_c / S) copies and runs S slots over them, trading
  the producer's extra outputs against zero kernels here.
- `dense`: one ordinary conv (the original one, or the GDWS weights made dense): what a layer
  ships when no GDWS form beats it.

Every form keeps the GDWS conv's stride, padding (also 'same'), dilation, padding mode and
groups, and is tested to equal `GDWSConv2d.forward`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import skip_init

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d

# Forms that replace one layer on their own; fold forms also rewrite the producing layer.
LAYER_FORMS = ("gather", "uniform", "slots", "dense")
FORMS = (*LAYER_FORMS, "fold", "fold-2", "fold-3")


@dataclass(frozen=True)
class KernelTable:
    """The kernels a GDWS conv really runs (zero padding kernels of grouped convs left out).

    Attributes:
        channel: (K,) input channel of each kernel.
        slot: (K,) rank of the kernel among its channel's kernels (0 = largest singular value).
        depthwise: (K, Kh, Kw) the kernels.
        pointwise: (K, M/groups) each kernel's 1x1 column, over the outputs of its group.
    """

    channel: torch.Tensor
    slot: torch.Tensor
    depthwise: torch.Tensor
    pointwise: torch.Tensor

    @property
    def max_slots(self) -> int:
        """max_c g_c: the channel multiplier a uniform form needs."""
        return int(self.slot.max()) + 1 if self.slot.numel() else 0


@torch.no_grad()
def kernel_table(gdws: GDWSConv2d) -> KernelTable:
    """List the real kernels of `gdws`, with their channel, slot and 1x1 column."""
    width = gdws.depthwise.out_channels
    groups = gdws.groups
    per_group_width = width // groups
    c_per_group = gdws.in_channels // groups
    m_per_group = gdws.out_channels // groups
    # Group k's real kernels are its first (sum of g_c over its channels) positions.
    real_per_group = gdws.kernels_per_channel.cpu().reshape(groups, c_per_group).sum(1)
    position = torch.arange(width)
    group = position // per_group_width
    local = position % per_group_width
    real = local < real_per_group[group]

    channel = gdws.channel_index.cpu()[real]
    order = torch.argsort(channel, stable=True)
    sorted_channel = channel[order]
    first = torch.searchsorted(sorted_channel, sorted_channel)
    slot = torch.empty_like(channel)
    slot[order] = torch.arange(channel.numel()) - first

    kh, kw = gdws.kernel_size
    depthwise = gdws.depthwise.weight.reshape(width, kh, kw)[real]
    pw = gdws.pointwise.weight.reshape(groups, m_per_group, per_group_width)
    pointwise = pw[group[real], :, local[real]]  # (K, M/groups)
    return KernelTable(channel, slot, depthwise.clone(), pointwise.clone())


@torch.no_grad()
def pad_kernels(gdws: GDWSConv2d, align: int) -> GDWSConv2d:
    """A copy of `gdws` whose kernel count is a multiple of `align`, padded with zero kernels.

    ONNX Runtime's CPU convs run in its fast blocked (NCHWc) layout only when their channel
    counts are multiples of the block size (8 with AVX2, 16 with AVX-512); a depthwise conv
    over, say, 126 channels falls back to a kernel several times slower. Zero kernels (with
    zero 1x1 columns) change nothing in the output. Grouped convs pad every group alike.
    """
    width, groups = gdws.depthwise.out_channels, gdws.groups
    per_group = width // groups
    new_per_group = per_group
    while (new_per_group * groups) % align:
        new_per_group += 1
    if new_per_group == per_group:
        return copy.deepcopy(gdws)
    c_per_group, m = gdws.in_channels // groups, gdws.out_channels
    kh, kw = gdws.kernel_size
    extra = new_per_group - per_group
    index = gdws.channel_index.cpu().reshape(groups, per_group)
    pad_index = (torch.arange(groups) * c_per_group)[:, None].expand(groups, extra)
    dw, pw = gdws.depthwise, gdws.pointwise
    padded = GDWSConv2d(
        gdws.in_channels, m, (kh, kw), torch.cat([index, pad_index], 1).reshape(-1),
        gdws.kernels_per_channel.cpu(), stride=dw.stride, padding=dw.padding,
        dilation=dw.dilation, groups=groups, bias=pw.bias is not None,
        padding_mode=dw.padding_mode, weighted_error=gdws.weighted_error,
        device=dw.weight.device, dtype=dw.weight.dtype,
    )  # fmt: skip
    dw_weight = dw.weight.reshape(groups, per_group, kh * kw)
    dw_weight = torch.cat([dw_weight, dw_weight.new_zeros(groups, extra, kh * kw)], 1)
    padded.depthwise.weight.copy_(dw_weight.reshape_as(padded.depthwise.weight))
    pw_weight = pw.weight.reshape(m, per_group)
    pw_weight = torch.cat([pw_weight, pw_weight.new_zeros(m, extra)], 1)
    padded.pointwise.weight.copy_(pw_weight.reshape_as(padded.pointwise.weight))
    if pw.bias is not None:
        padded.pointwise.bias.copy_(pw.bias)
    return padded.train(gdws.training)


def _depthwise_like(gdws: GDWSConv2d, channels: int, multiplier: int = 1) -> nn.Conv2d:
    """A conv with groups = `channels` and the GDWS conv's spatial settings."""
    dw = gdws.depthwise
    return skip_init(
        nn.Conv2d, channels, channels * multiplier, gdws.kernel_size, stride=dw.stride,
        padding=dw.padding, dilation=dw.dilation, groups=channels, bias=False,
        padding_mode=dw.padding_mode,
        device=dw.weight.device, dtype=dw.weight.dtype,
    )  # fmt: skip


def _pointwise_like(gdws: GDWSConv2d, width: int, bias: bool) -> nn.Conv2d:
    pw = gdws.pointwise
    return skip_init(
        nn.Conv2d, width, gdws.out_channels, 1, groups=gdws.groups, bias=bias,
        device=pw.weight.device, dtype=pw.weight.dtype,
    )  # fmt: skip


class GatherGDWS(nn.Module):
    """The reference form: channel Gather + multiplier-1 depthwise conv + 1x1 conv."""

    def __init__(self, gdws: GDWSConv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = gdws.in_channels, gdws.out_channels
        self.register_buffer("channel_index", gdws.channel_index.clone())
        self.gather = not torch.equal(gdws.channel_index.cpu(), torch.arange(gdws.in_channels))
        self.depthwise = copy.deepcopy(gdws.depthwise)
        self.pointwise = copy.deepcopy(gdws.pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather:
            x = x.index_select(1, self.channel_index)
        return self.pointwise(self.depthwise(x))


class UniformGDWS(nn.Module):
    """One grouped conv (groups = C, multiplier max g_c, zero kernels as padding) + 1x1 conv."""

    def __init__(self, gdws: GDWSConv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = gdws.in_channels, gdws.out_channels
        table = kernel_table(gdws)
        multiplier = table.max_slots
        channels, groups = gdws.in_channels, gdws.groups
        kh, kw = gdws.kernel_size
        self.multiplier = multiplier
        self.depthwise = _depthwise_like(gdws, channels, multiplier)
        has_bias = gdws.pointwise.bias is not None
        self.pointwise = _pointwise_like(gdws, channels * multiplier, has_bias)
        # Kernel (c, j) is output c * multiplier + j of the grouped conv; in the grouped 1x1 conv
        # it is column (c mod C/groups) * multiplier + j of group c // (C/groups).
        c_per_group, m_per_group = channels // groups, gdws.out_channels // groups
        out = table.channel * multiplier + table.slot
        group = table.channel // c_per_group
        column = (table.channel % c_per_group) * multiplier + table.slot
        with torch.no_grad():
            dw = torch.zeros_like(self.depthwise.weight).reshape(-1, kh, kw)
            dw[out] = table.depthwise
            self.depthwise.weight.copy_(dw.reshape_as(self.depthwise.weight))
            pw = torch.zeros(groups, m_per_group, c_per_group * multiplier).to(dw)
            pw[group, :, column] = table.pointwise
            self.pointwise.weight.copy_(pw.reshape_as(self.pointwise.weight))
            if gdws.pointwise.bias is not None:
                self.pointwise.bias.copy_(gdws.pointwise.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SlotsGDWS(nn.Module):
    """Kernel slots over an input whose channels may already be repeated (the `slots` and
    `fold` forms).

    The input holds `copies[c]` copies of channel c (one copy each when `copies` is None, the
    `slots` form; a producer that was folded computes the copies, the `fold` forms). Copy r
    of channel c takes kernels r, r + copies[c], r + 2 copies[c], ... of c, so every copy holds
    at most `slots` kernels. Slot s is a multiplier-1 depthwise conv over all input channels
    (zero kernels where a copy has fewer kernels) followed by its own 1x1 conv; the slots'
    outputs are summed, and slot 0's 1x1 conv holds the bias. With one copy per kernel
    (`copies` = g_c) there is a single slot: a depthwise conv and a 1x1 conv.

    Attributes:
        source_index: (W,) which original channel each input channel is a copy of; a folded
            producer computes exactly these outputs.
    """

    def __init__(
        self, gdws: GDWSConv2d, copies: torch.Tensor | None = None, align: int = 1
    ) -> None:
        super().__init__()
        table = kernel_table(gdws)
        groups = gdws.groups
        m_per_group = gdws.out_channels // groups
        kh, kw = gdws.kernel_size
        source, position, slot = _slot_layout(gdws, table, copies, align)
        width = source.numel()
        w_per_group = width // groups
        self.in_channels, self.out_channels = width, gdws.out_channels
        self.register_buffer("source_index", source, persistent=False)
        self.depthwise = nn.ModuleList()
        self.pointwise = nn.ModuleList()
        has_bias = gdws.pointwise.bias is not None
        for s in range(int(slot.max()) + 1):
            in_slot = slot == s
            pos = position[in_slot]
            dw = _depthwise_like(gdws, width)
            pw = _pointwise_like(gdws, width, bias=has_bias and s == 0)
            with torch.no_grad():
                dw_weight = torch.zeros(width, kh, kw).to(dw.weight)
                dw_weight[pos] = table.depthwise[in_slot]
                dw.weight.copy_(dw_weight.reshape_as(dw.weight))
                pw_weight = torch.zeros(groups, m_per_group, w_per_group).to(pw.weight)
                pw_weight[pos // w_per_group, :, pos % w_per_group] = table.pointwise[in_slot]
                pw.weight.copy_(pw_weight.reshape_as(pw.weight))
                if pw.bias is not None:
                    pw.bias.copy_(gdws.pointwise.bias)
            self.depthwise.append(dw)
            self.pointwise.append(pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise[0](self.depthwise[0](x))
        for dw, pw in zip(self.depthwise[1:], self.pointwise[1:], strict=True):
            y = y + pw(dw(x))
        return y


def _slot_layout(gdws: GDWSConv2d, table: KernelTable, copies: torch.Tensor | None, align: int):
    """(source channel of each input channel, input channel and slot of each kernel)."""
    if copies is None:
        return torch.arange(gdws.in_channels), table.channel, table.slot
    if gdws.groups != 1:
        raise InvalidInputError("a folded GDWS conv must have groups == 1")
    copies = copies.to(torch.long).cpu()
    counts = gdws.kernels_per_channel.cpu()
    if ((copies == 0) != (counts == 0)).any() or (copies > counts).any():
        raise InvalidInputError("copies must lie in [1, g_c] where g_c > 0, and be 0 elsewhere")
    source = torch.arange(gdws.in_channels).repeat_interleave(copies)
    first = torch.cumsum(copies, 0) - copies
    per_copy = copies[table.channel]
    position = first[table.channel] + table.slot % per_copy
    slot = table.slot // per_copy
    # The folded producer computes extra copies of channel 0, with zero kernels here, to keep
    # the width a multiple of `align` (see `pad_kernels`).
    if source.numel() % align:
        source = torch.cat([source, source.new_zeros(align - source.numel() % align)])
    return source, position, slot


def fold_source_index(gdws: GDWSConv2d, slots: int, align: int = 1) -> torch.Tensor:
    """The output channels a producer folded into `gdws` (form fold-`slots`) computes: output
    i is the original's channel index[i]."""
    table = kernel_table(gdws)
    return _slot_layout(gdws, table, fold_copies(gdws, slots), align)[0]


def fold_copies(gdws: GDWSConv2d, slots: int) -> torch.Tensor:
    """Copies of each channel a folded producer computes so no copy needs more than `slots`
    kernels: ceil(g_c / slots)."""
    return (gdws.kernels_per_channel.cpu() + slots - 1) // slots


def fold_slots(form: str) -> int | None:
    """The slot count of a fold form ("fold" = 1, "fold-2" = 2, ...), None for other forms."""
    if form == "fold":
        return 1
    if form.startswith("fold-") and form[5:].isdigit() and int(form[5:]) >= 1:
        return int(form[5:])
    return None


def is_form(form: str) -> bool:
    """Whether `form` names a lowering form: one of `LAYER_FORMS`, "fold" or "fold-<S>"."""
    return form in LAYER_FORMS or fold_slots(form) is not None


def dense_conv(gdws: GDWSConv2d) -> nn.Conv2d:
    """The ordinary conv that computes what `gdws` computes (its GDWS weights made dense)."""
    return gdws.to_dense()


def lower_layer(
    gdws: GDWSConv2d, form: str, *, original: nn.Conv2d | None = None, align: int = 1
) -> nn.Module:
    """The module that replaces `gdws` in lowering form `form`.

    Args:
        gdws: the GDWS conv.
        form: "gather", "uniform", "slots", "dense", or a fold form ("fold", "fold-<S>"), for
            which the module expects its input already repeated by the folded producer
            (`SlotsGDWS.source_index` says how; `lower_model` does both sides).
        original: for "dense", the original conv to ship (a copy); None makes the GDWS weights
            dense instead, which computes exactly what `gdws` computes.
        align: pad channel counts of "gather", "slots" and fold forms to a multiple of this.
    """
    if form == "gather":
        return GatherGDWS(pad_kernels(gdws, align))
    if form == "uniform":
        return UniformGDWS(gdws)
    if form == "slots":
        return SlotsGDWS(gdws, align=align)
    if form == "dense":
        return copy.deepcopy(original) if original is not None else dense_conv(gdws)
    slots = fold_slots(form)
    if slots is not None:
        return SlotsGDWS(gdws, fold_copies(gdws, slots), align=align)
    raise InvalidInputError(
        f"unknown lowering form {form!r}; choose one of {', '.join(FORMS)} or fold-<S>"
    )


__all__ = [
    "FORMS",
    "LAYER_FORMS",
    "GatherGDWS",
    "KernelTable",
    "SlotsGDWS",
    "UniformGDWS",
    "dense_conv",
    "fold_copies",
    "fold_source_index",
    "fold_slots",
    "is_form",
    "kernel_table",
    "lower_layer",
    "pad_kernels",
]
