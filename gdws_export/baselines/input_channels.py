"""Input-channel pruning without fine-tuning: the part of GDWS that gives a channel no kernel
(g_c = 0), without the low-rank part.

Each approximable conv keeps the input channels that carry the most of its weight energy. The
choice is global, in the `relative` sensitivity's units (a channel's share of its layer's weight
energy): the channels with the smallest shares go first, until the convs keep `mac_ratio` of
their MACs. A pruned conv becomes a channel Gather and a smaller dense conv
(`ChannelSubsetConv2d`), so it exports to plain ONNX and its speed is real. Strong weight decay
leaves many input channels near zero; this baseline says how much of GDWS's gain such dead
channels alone explain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.gdws.conv import conv_macs_per_pixel
from gdws_export.gdws.selection import find_convs, output_sizes, replace_module


class ChannelSubsetConv2d(nn.Module):
    """A conv that reads only `channel_index` of its input channels: Gather, then a dense conv
    with that many input channels."""

    def __init__(self, conv: nn.Conv2d, keep: torch.Tensor) -> None:
        super().__init__()
        if conv.groups != 1:
            raise InvalidInputError("input-channel pruning needs a conv with groups == 1")
        keep = torch.as_tensor(keep, dtype=torch.long).sort().values
        self.register_buffer("channel_index", keep)
        self.conv = nn.Conv2d(
            len(keep), conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[:, keep])
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.conv.to(conv.weight.device, conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.index_select(1, self.channel_index))


@dataclass
class InputPruningReport:
    """What `prune_input_channels` did: the budget, the MAC ratio reached (of the approximable
    convs), and the input channels each pruned conv kept."""

    mac_ratio: float
    achieved_mac_ratio: float
    kept: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)


def prune_input_channels(
    model: nn.Module,
    *,
    mac_ratio: float,
    input_shape: Sequence[int] | None = None,
    skip_first: bool = True,
) -> tuple[nn.Module, InputPruningReport]:
    """A copy of `model` whose approximable convs read only their strongest input channels.

    Args:
        model: the model; not modified.
        mac_ratio: fraction of the approximable convs' MACs to keep, in (0, 1].
        input_shape: (C, H, W) of one image (default: `model.input_shape`).
        skip_first: leave the first conv alone (as `approximate` does).

    Returns:
        (pruned copy in eval mode, InputPruningReport). Every conv keeps at least one channel.
    """
    mac_ratio = check_budget_ratio(mac_ratio, "mac_ratio")
    shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()))
    if len(shape) != 3:
        raise InvalidInputError("prune_input_channels needs input_shape (C, H, W)")
    sites = [s for s in find_convs(model, skip_first=skip_first)
             if s.skip_reason is None and s.conv.groups == 1]  # fmt: skip
    if not sites:
        raise InvalidInputError("the model has no conv whose input channels can be pruned")
    sizes = output_sizes(model, [s.name for s in sites], shape)
    costs, candidates, total = {}, [], 0
    for site in sites:
        w = site.conv.weight.detach().double()
        channels = w.shape[1]
        costs[site.name] = conv_macs_per_pixel(site.conv) * sizes[site.name][0] * sizes[
            site.name][1] // channels  # fmt: skip
        total += costs[site.name] * channels
        energy = w.pow(2).sum(dim=(0, 2, 3))
        share = energy / energy.sum().clamp_min(1e-300)
        strongest = int(share.argmax())
        candidates += [(float(share[c]), site.name, c) for c in range(channels) if c != strongest]
    kept = {s.name: set(range(s.conv.in_channels)) for s in sites}
    macs = total
    for _, name, channel in sorted(candidates):
        if macs <= mac_ratio * total:
            break
        kept[name].discard(channel)
        macs -= costs[name]
    pruned = copy.deepcopy(model)
    report = InputPruningReport(mac_ratio, macs / total)
    for site in sites:
        report.channels[site.name] = site.conv.in_channels
        report.kept[site.name] = len(kept[site.name])
        if len(kept[site.name]) < site.conv.in_channels:
            keep = torch.tensor(sorted(kept[site.name]))
            replace_module(pruned, site.name, ChannelSubsetConv2d(site.conv, keep))
    return pruned.eval(), report


__all__ = ["ChannelSubsetConv2d", "InputPruningReport", "prune_input_channels"]
