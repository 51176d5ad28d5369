"""The `fold` form: move a GDWS conv's channel Gather into the layer that produces its input.

A GDWS conv repeats input channel c g_c times before its depthwise conv. When the tensor it
reads comes from one conv (a plain `nn.Conv2d` or another GDWS conv) through per-channel ops
only (BatchNorm, ReLU-like activations, pooling, dropout) and nothing else reads any tensor on
that path, the producing conv can compute the repeated channels itself: its output channels
(weight rows, bias) and the BatchNorm parameters on the way are indexed by the GDWS conv's
`channel_index`. Channels with g_c = 0 vanish from the producer; channels with g_c > 1 cost
the producer extra outputs. The GDWS conv is then a multiplier-1 depthwise conv and a 1x1 conv.

Where a fold is possible is found with torch.fx (symbolic tracing, GDWS convs as leaves): the
path from the producer to the GDWS conv must be a chain of single-user nodes, and every module
on it must be called once in the whole forward (a shared module cannot change width for one
caller only). A grouped GDWS conv (groups > 1) never folds: its groups read fixed blocks of
input channels, which the repeated channels would not keep. A model fx cannot trace gets no
folds; the reason is reported, and `auto` then does not offer the fold forms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import skip_init

from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.selection import traced_sites

# Modules that act on each channel independently and hold no per-channel state.
_STATELESS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_CHANNEL_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, torch.sigmoid,
    torch.tanh, F.hardtanh, F.hardswish, F.mish, F.dropout, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.clamp,
}  # fmt: skip
_CHANNEL_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous"}


@dataclass(frozen=True)
class FoldSite:
    """A GDWS conv whose Gather can move into `producer`.

    Attributes:
        consumer: the GDWS conv's module name.
        producer: the conv (or GDWS conv) that computes its input.
        batchnorms: BatchNorm2d modules on the path, whose parameters are repeated too.
    """

    consumer: str
    producer: str
    batchnorms: tuple[str, ...] = ()


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, GDWSConv2d) or super().is_leaf_module(module, qualname)


def find_fold_sites(model: nn.Module) -> tuple[dict[str, FoldSite], dict[str, str]]:
    """Find every GDWS conv of `model` whose Gather can be folded into its producer.

    Returns:
        (sites, reasons): the fold site of each foldable GDWS conv, and for every other GDWS
        conv one line saying why it cannot fold.
    """
    gdws_names = [n for n, m in model.named_modules() if isinstance(m, GDWSConv2d)]
    return traced_sites(model, gdws_names, _site_of, _Tracer())


def _site_of(model: nn.Module, node: fx.Node, calls: dict[str, int]):
    consumer = node.target
    if calls[consumer] != 1:
        return None, "the GDWS conv is called more than once"
    groups = model.get_submodule(consumer).groups
    if groups != 1:  # each group reads its own block of input channels: copies cannot move
        return None, f"the GDWS conv is grouped (groups={groups}); folds need groups == 1"
    batchnorms: list[str] = []
    current = node.args[0] if node.args else None
    while True:
        if not isinstance(current, fx.Node):
            return None, "its input is not a traced tensor"
        if len(current.users) != 1:
            readers = len(current.users)
            return None, f"its input is also read elsewhere ({current.name} has {readers} readers)"
        if current.op == "call_module":
            module = model.get_submodule(current.target)
            if calls[current.target] != 1:
                return None, f"module {current.target!r} is shared by several calls"
            if _can_expand_producer(module):
                return FoldSite(consumer, current.target, tuple(reversed(batchnorms))), ""
            if isinstance(module, nn.BatchNorm2d):
                batchnorms.append(current.target)
            elif isinstance(module, nn.MaxPool2d):
                if module.return_indices:
                    return None, f"{current.target!r} returns indices"
            elif not isinstance(module, _STATELESS_MODULES):
                return None, f"{current.target!r} ({type(module).__name__}) may mix channels"
        elif current.op == "call_function" and current.target in _CHANNEL_FUNCTIONS:
            if any(isinstance(a, fx.Node) for a in (*current.args[1:], *current.kwargs.values())):
                return None, f"{current.name} combines several tensors"
        elif current.op == "call_method" and current.target in _CHANNEL_METHODS:
            if any(isinstance(a, fx.Node) for a in (*current.args[1:], *current.kwargs.values())):
                return None, f"{current.name} combines several tensors"
        else:
            return None, f"no foldable producer conv (reached {current.op} {current.target})"
        current = current.args[0] if current.args else None


def _can_expand_producer(module: nn.Module) -> bool:
    if isinstance(module, GDWSConv2d):
        return module.groups == 1
    return type(module) is nn.Conv2d and module.groups == 1


@torch.no_grad()
def expand_outputs(module: nn.Module, index: torch.Tensor) -> nn.Module:
    """A copy of `module` whose output channel i is the original's channel index[i].

    Works for `nn.Conv2d` and `GDWSConv2d` with groups == 1, and `nn.BatchNorm2d`.
    """
    index = index.to(torch.long)
    if isinstance(module, GDWSConv2d):
        pw = module.pointwise
        new = GDWSConv2d(
            module.in_channels, index.numel(), module.kernel_size, module.channel_index.cpu(),
            module.kernels_per_channel.cpu(), stride=module.depthwise.stride,
            padding=module.depthwise.padding, dilation=module.depthwise.dilation,
            bias=pw.bias is not None, padding_mode=module.depthwise.padding_mode,
            weighted_error=module.weighted_error, device=pw.weight.device, dtype=pw.weight.dtype,
        )  # fmt: skip
        new.depthwise.weight.copy_(module.depthwise.weight)
        new.pointwise.weight.copy_(pw.weight[index.to(pw.weight.device)])
        if pw.bias is not None:
            new.pointwise.bias.copy_(pw.bias[index.to(pw.weight.device)])
        return new.train(module.training)
    if isinstance(module, nn.Conv2d):
        new = skip_init(
            nn.Conv2d, module.in_channels, index.numel(), module.kernel_size, stride=module.stride,
            padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode,
            device=module.weight.device, dtype=module.weight.dtype,
        )  # fmt: skip
        new.weight.copy_(module.weight[index.to(module.weight.device)])
        if module.bias is not None:
            new.bias.copy_(module.bias[index.to(module.weight.device)])
        return new.train(module.training)
    if isinstance(module, nn.BatchNorm2d):
        new = nn.BatchNorm2d(
            index.numel(),
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        ).to(next(iter(module.buffers()), torch.empty(0)).device)
        new.load_state_dict(
            {
                k: (v[index.to(v.device)] if v.dim() == 1 else v)
                for k, v in module.state_dict().items()
            }
        )
        return new.train(module.training)
    raise TypeError(f"cannot repeat the output channels of a {type(module).__name__}")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called `name` (dotted path) by `module`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


__all__ = ["FoldSite", "expand_outputs", "find_fold_sites", "set_submodule"]
