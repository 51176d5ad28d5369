"""L1-norm filter pruning without fine-tuning (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017): the baseline GDWS is compared with at the same MACs.

A conv's output filter (one row W[m] of its weight) is ranked by its L1 norm sum |W[m]|; the
filters with the smallest norms are removed, together with everything that only exists for
them: the matching channels of the BatchNorms on the way and the matching input channels of
the one conv that reads them. The modules are sliced physically, so the exported graph is
smaller and faster, not just sparse.

Which convs can be pruned is found with torch.fx: a conv is prunable when its output reaches
exactly one other conv through a chain of single-reader, per-channel ops (BatchNorm, ReLU-like
activations, pooling, dropout). Convs whose output joins a residual stream (an addition, a
concatenation) or feeds a Linear layer are left alone, as in Li et al.'s ResNet experiments,
which pruned only the first conv of each residual block. Both convs must be plain
`nn.Conv2d` with groups == 1, each called once.

Global MAC target (`mac_ratio`): every prunable conv loses the same fraction of its filters
(Li et al. chose per-layer fractions by a sensitivity scan, which needs the evaluation data
and is a tuning step we leave out); the fraction is the smallest that brings the MACs of all
the model's convs to at most `mac_ratio` of the original's.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import skip_init

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.approximation_report import MacRatioJson
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.gdws.conv import conv_macs_per_pixel
from gdws_export.gdws.selection import (
    output_sizes,
    replace_module,
    resolve_input_shape,
    traced_sites,
)

# Modules that act on each channel alone and hold no per-channel state.
_STATELESS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d,
)  # fmt: skip
_CHANNEL_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, torch.sigmoid,
    torch.tanh, F.hardtanh, F.hardswish, F.mish, F.dropout, F.max_pool2d, F.avg_pool2d,
    torch.clamp,
}  # fmt: skip
_CHANNEL_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous"}


@dataclass(frozen=True)
class PruneSite:
    """A conv whose output filters can be removed.

    Attributes:
        producer: the conv losing output filters.
        consumer: the one conv reading them, losing the same input channels.
        batchnorms: BatchNorm2d modules between the two, losing the same channels.
    """

    producer: str
    consumer: str
    batchnorms: tuple[str, ...] = ()


@dataclass
class PrunedLayer:
    """One pruned conv: filters before and after, and which were kept (original indices)."""

    name: str
    consumer: str
    filters_before: int
    filters_after: int
    kept: list[int] = field(default_factory=list)


@dataclass
class PruningReport(MacRatioJson):
    """What `prune_filters` did. MACs are of all the model's convs, per image."""

    fraction: float
    mac_ratio: float | None
    input_shape: tuple[int, ...]
    layers: list[PrunedLayer]
    skipped: dict[str, str]
    macs_before: int
    macs_after: int


def find_prune_sites(
    model: nn.Module, *, skip_first: bool = True, exclude: Sequence[str] | None = None
) -> tuple[list[PruneSite], dict[str, str]]:
    """Every prunable conv of `model` (see the module docstring), in module order.

    Args:
        model: any `nn.Module` torch.fx can trace.
        skip_first: leave the model's first conv whole (as GDWS does).
        exclude: conv names or shell-style patterns kept exact: their filters and their input
            channels stay (a pattern that matches no conv is an error).

    Returns:
        (sites, reasons): the prunable convs, and for every other conv one line saying why.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    exclude = list(exclude or ())
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in convs):
            raise InvalidInputError(f"exclude pattern {pattern!r} matches no conv layer")
    sites, reasons = traced_sites(model, convs, _site_from)
    if skip_first and convs and convs[0] in sites:
        del sites[convs[0]]
        reasons[convs[0]] = "first conv (skip_first=True)"
    # A conv kept exact keeps its filters and every input channel: its producer is not pruned.
    for name, site in list(sites.items()):
        for conv in (site.producer, site.consumer):
            if any(fnmatch.fnmatchcase(conv, p) for p in exclude):
                del sites[name]
                reasons[name] = "matched by exclude" if conv == name else f"{conv} excluded"
                break
    return [sites[n] for n in convs if n in sites], {n: reasons[n] for n in convs if n in reasons}


def _plain_conv(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups == 1


def _site_from(model: nn.Module, node: fx.Node, calls: dict[str, int]):
    producer = node.target
    if not _plain_conv(model.get_submodule(producer)):
        return None, "grouped or not a plain nn.Conv2d"
    if calls[producer] != 1:
        return None, "the conv is called more than once"
    batchnorms: list[str] = []
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None, f"its output is read by {len(users)} ops ({current.name})"
        nxt = users[0]
        if not nxt.args or nxt.args[0] is not current:
            return None, f"{nxt.name} combines its output with other tensors"
        if any(isinstance(a, fx.Node) for a in (*nxt.args[1:], *nxt.kwargs.values())):
            return None, f"{nxt.name} combines several tensors"
        if nxt.op == "call_module":
            module = model.get_submodule(nxt.target)
            if calls[nxt.target] != 1:
                return None, f"module {nxt.target!r} is shared by several calls"
            if isinstance(module, nn.Conv2d):
                if not _plain_conv(module):
                    return None, f"its reader {nxt.target!r} is grouped or not a plain conv"
                return PruneSite(producer, nxt.target, tuple(batchnorms)), ""
            if isinstance(module, nn.BatchNorm2d):
                batchnorms.append(nxt.target)
            elif isinstance(module, nn.MaxPool2d) and module.return_indices:
                return None, f"{nxt.target!r} returns indices"
            elif not isinstance(module, _STATELESS_MODULES):
                return None, f"{nxt.target!r} ({type(module).__name__}) may mix channels"
        elif nxt.op == "call_function" and nxt.target in _CHANNEL_FUNCTIONS:
            pass
        elif nxt.op == "call_method" and nxt.target in _CHANNEL_METHODS:
            pass
        else:
            return None, f"no conv reads it alone (reached {nxt.op} {nxt.target})"
        current = nxt


def l1_order(conv: nn.Conv2d) -> torch.Tensor:
    """Output filter indices of `conv` by ascending L1 norm (the first are pruned first)."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return torch.argsort(norms, stable=True)


def prune_filters(
    model: nn.Module,
    *,
    fraction: float | None = None,
    mac_ratio: float | None = None,
    input_shape: Sequence[int] | None = None,
    skip_first: bool = True,
    multiple_of: int = 1,
    exclude: Sequence[str] | None = None,
) -> tuple[nn.Module, PruningReport]:
    """Remove the lowest-L1 output filters of every prunable conv; the input model is kept.

    Args:
        model: any `nn.Module` torch.fx can trace (registry models can).
        fraction: in [0, 1): remove this fraction of the filters of every prunable conv
            (rounded to the nearest filter; at least one filter stays).
        mac_ratio: in (0, 1]: instead, the smallest common fraction that brings the MACs of
            all the model's convs to at most this fraction of the original's. Exactly one of
            `fraction` and `mac_ratio`.
        input_shape: (C, H, W) of one input; defaults to `model.input_shape`.
        skip_first: leave the first conv whole.
        multiple_of: keep a multiple of this many filters per conv (rounded down, at least
            one multiple; a conv with fewer filters keeps them all). ONNX Runtime CPU runs
            channel counts that are multiples of 8 in a blocked layout and the rest up to
            2.5x slower per MAC, so a deployed pruned model rounds its widths.
        exclude: conv names or patterns whose filters are kept (`find_prune_sites`).

    Returns:
        (pruned model, report). The pruned model is in the same train/eval mode as the input.

    Raises:
        UnsupportedModelError: no conv can be pruned, or `mac_ratio` is out of reach.

    Example:
        >>> pruned, report = prune_filters(model, mac_ratio=0.5)     # doctest: +SKIP
        >>> report.achieved_mac_ratio <= 0.5                         # doctest: +SKIP
        True
    """
    if (fraction is None) == (mac_ratio is None):
        raise InvalidInputError("give exactly one of fraction or mac_ratio")
    if fraction is not None and not (_number(fraction) and 0 <= fraction < 1):
        raise InvalidInputError(f"fraction must be in [0, 1), got {fraction!r}")
    if mac_ratio is not None:
        mac_ratio = check_budget_ratio(mac_ratio, "mac_ratio")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise InvalidInputError(f"multiple_of must be a positive int, got {multiple_of!r}")
    shape = resolve_input_shape(model, input_shape, needed_by="pruning")
    sites, reasons = find_prune_sites(model, skip_first=skip_first, exclude=exclude)
    if not sites:
        raise UnsupportedModelError(
            "no conv can be pruned: none feeds exactly one other conv through per-channel ops"
        )
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pixels = {n: h * w for n, (h, w) in output_sizes(model, list(convs), shape).items()}
    macs_before = _macs(convs, pixels, {})
    if mac_ratio is not None:
        fraction = _fraction_for(convs, pixels, sites, mac_ratio, macs_before, multiple_of)
    keep_counts = {
        s.producer: _kept(convs[s.producer].out_channels, fraction, multiple_of) for s in sites
    }
    pruned = copy.deepcopy(model)
    layers = []
    for site in sites:
        conv = convs[site.producer]
        kept = torch.sort(l1_order(conv)[conv.out_channels - keep_counts[site.producer] :]).values
        _slice(pruned, site, kept)
        layers.append(
            PrunedLayer(site.producer, site.consumer, conv.out_channels, len(kept), kept.tolist())
        )
    report = PruningReport(
        fraction=float(fraction),
        mac_ratio=mac_ratio,
        input_shape=shape,
        layers=layers,
        skipped=reasons,
        macs_before=macs_before,
        macs_after=_macs(convs, pixels, _pruned_shapes(sites, keep_counts)),
    )
    return pruned, report


def _kept(filters: int, fraction: float, multiple_of: int = 1) -> int:
    kept = max(1, filters - int(math.floor(fraction * filters + 0.5)))
    if filters <= multiple_of:
        return filters
    return max(multiple_of, kept - kept % multiple_of)


def _pruned_shapes(sites, keep_counts) -> dict[str, tuple[int | None, int | None]]:
    """Conv name -> (new out_channels or None, new in_channels or None)."""
    shapes: dict[str, list] = {}
    for site in sites:
        shapes.setdefault(site.producer, [None, None])[0] = keep_counts[site.producer]
        shapes.setdefault(site.consumer, [None, None])[1] = keep_counts[site.producer]
    return {name: tuple(value) for name, value in shapes.items()}


def _macs(convs, pixels, shapes) -> int:
    total = 0
    for name, conv in convs.items():
        out_ch, in_ch = shapes.get(name, (None, None))
        out_ch = conv.out_channels if out_ch is None else out_ch
        in_ch = conv.in_channels if in_ch is None else in_ch
        per_pixel = conv_macs_per_pixel(conv) // (conv.out_channels * conv.in_channels)
        total += out_ch * in_ch * per_pixel * pixels[name]
    return total


def _fraction_for(
    convs, pixels, sites, mac_ratio: float, macs_before: int, multiple_of: int
) -> float:
    """Smallest fraction whose MACs are <= mac_ratio * macs_before (MACs only fall with it)."""

    def ratio(fraction: float) -> float:
        counts = {
            s.producer: _kept(convs[s.producer].out_channels, fraction, multiple_of) for s in sites
        }
        return _macs(convs, pixels, _pruned_shapes(sites, counts)) / macs_before

    if ratio(0.0) <= mac_ratio:
        return 0.0
    if ratio(1 - 1e-9) > mac_ratio:
        raise UnsupportedModelError(
            f"mac_ratio {mac_ratio} is out of reach: pruning every prunable conv to one filter "
            f"leaves {ratio(1 - 1e-9):.3f} of the conv MACs"
        )
    low, high = 0.0, 1 - 1e-9  # ratio(low) > mac_ratio >= ratio(high)
    for _ in range(60):
        middle = (low + high) / 2
        if ratio(middle) <= mac_ratio:
            high = middle
        else:
            low = middle
    return high


@torch.no_grad()
def _slice(model: nn.Module, site: PruneSite, kept: torch.Tensor) -> None:
    producer = model.get_submodule(site.producer)
    replace_module(model, site.producer, _conv_slice(producer, out_index=kept))
    for name in site.batchnorms:
        replace_module(model, name, _batchnorm_slice(model.get_submodule(name), kept))
    consumer = model.get_submodule(site.consumer)
    replace_module(model, site.consumer, _conv_slice(consumer, in_index=kept))


def _conv_slice(conv: nn.Conv2d, *, out_index=None, in_index=None) -> nn.Conv2d:
    weight = conv.weight
    bias = conv.bias
    if out_index is not None:
        weight = weight[out_index.to(weight.device)]
        bias = bias[out_index.to(weight.device)] if bias is not None else None
    if in_index is not None:
        weight = weight[:, in_index.to(weight.device)]
    new = skip_init(
        nn.Conv2d, weight.shape[1], weight.shape[0], conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, bias=bias is not None,
        padding_mode=conv.padding_mode, device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new.train(conv.training)


def _batchnorm_slice(bn: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        len(index), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )  # fmt: skip
    state = {
        key: (value[index.to(value.device)] if value.dim() == 1 else value)
        for key, value in bn.state_dict().items()
    }
    new.load_state_dict(state)
    device = next(iter(bn.state_dict().values()), torch.empty(0)).device
    return new.to(device).train(bn.training)


def _number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(float(value))
    )


__all__ = [
    "PruneSite",
    "PrunedLayer",
    "PruningReport",
    "find_prune_sites",
    "l1_order",
    "prune_filters",
]
