"""Which convs of a model GDWS may replace, and why the others are left alone."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.conv import GDWSConv2d, conv_macs_per_pixel, is_depthwise


@dataclass(frozen=True)
class ConvSite:
    """One `nn.Conv2d` of a model: its dotted name, the module, and why it is skipped (if so)."""

    name: str
    conv: nn.Conv2d
    skip_reason: str | None = None


def find_convs(
    model: nn.Module,
    *,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[ConvSite]:
    """Every `nn.Conv2d` of `model` in module order, each marked approximable or not.

    A conv is skipped when it is the first conv (with `skip_first`, the paper's setting: it sees
    the raw image and is cheap), a 1x1 conv (nothing to separate), a depthwise conv (already
    minimal), part of an existing GDWS layer, not matched by `include`, or matched by
    `exclude`. `include`/`exclude` are module names or shell-style patterns ("layer4.*"); a
    pattern that matches no conv is an error, since it is almost always a typo.
    """
    sites: list[ConvSite] = []
    inside_gdws: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, GDWSConv2d):
            inside_gdws.append(name + ".")
            continue
        if not isinstance(module, nn.Conv2d):
            continue
        if any(name.startswith(prefix) for prefix in inside_gdws):
            continue
        sites.append(ConvSite(name, module))
    names = [s.name for s in sites]
    include = _check_patterns(include, names, "include")
    exclude = _check_patterns(exclude, names, "exclude")

    marked = []
    for index, site in enumerate(sites):
        conv = site.conv
        reason = None
        if skip_first and index == 0:
            reason = "first conv (skip_first=True)"
        elif conv.kernel_size == (1, 1):
            reason = "1x1 conv: nothing to separate"
        elif is_depthwise(conv):
            reason = "depthwise conv: already minimal"
        elif include and not _matches(site.name, include):
            reason = "not matched by include"
        elif exclude and _matches(site.name, exclude):
            reason = "matched by exclude"
        elif not torch.isfinite(conv.weight).all():
            raise InvalidInputError(f"layer {site.name!r}: weight contains NaN or Inf")
        marked.append(ConvSite(site.name, conv, reason))
    return marked


def output_sizes(
    model: nn.Module, names: Sequence[str], input_shape: Sequence[int]
) -> dict[str, tuple[int, int]]:
    """Output height and width of the named convs for one input of shape (C, H, W)."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))
        )
        for name in names
    ]
    try:
        _run_once(model, input_shape, hooks)
    except Exception as exc:  # a user model can fail in any way; say where
        raise UnsupportedModelError(
            f"model forward failed on input shape {tuple(input_shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    return sizes


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one image of shape (C, H, W) through every nn.Conv2d and
    nn.Linear that runs (GDWS layers count through their depthwise and 1x1 convs). The model
    runs once in eval mode; its mode is restored."""
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += conv_macs_per_pixel(module) * int(output.shape[-2] * output.shape[-1])
        else:  # nn.Linear: in_features MACs per output value
            total += int(output[0].numel()) * module.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]  # fmt: skip
    _run_once(model, input_shape, hooks)
    return total


def _run_once(model: nn.Module, input_shape: Sequence[int], hooks: list) -> None:
    """One zero image through `model` in eval mode, without gradients, for its forward
    `hooks`; the hooks are removed and the model's mode restored whatever happens."""
    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else None)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def dense_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every GDWS conv replaced by the dense conv it computes: the same
    function, which PyTorch runs (and attacks) faster than the depthwise + 1x1 pair."""
    copied = copy.deepcopy(model)
    names = [n for n, m in copied.named_modules() if isinstance(m, GDWSConv2d)]
    for name in names:
        replace_module(copied, name, copied.get_submodule(name).to_dense())
    return copied


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_patterns(patterns, names: list[str], what: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise InvalidInputError(
                f"{what} pattern {pattern!r} matches no conv layer (convs: {shown or 'none'})"
            )
    return list(patterns)


def traced_sites(
    model: nn.Module,
    names: Sequence[str],
    site_of: Callable[[nn.Module, fx.Node, dict[str, int]], tuple[object | None, str]],
    tracer: fx.Tracer | None = None,
) -> tuple[dict[str, object], dict[str, str]]:
    """Trace `model` with torch.fx and ask `site_of(model, node, calls)` about every call of a
    module in `names` (`calls`: how often each module is called in the forward).

    Returns:
        (sites, reasons): name -> what `site_of` returned for it, and for every other name one
        line saying why not (`site_of`'s reason, a failed trace, or never called).
    """
    try:
        graph = (tracer or fx.Tracer()).trace(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow, among others
        reason = f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})".splitlines()[0]
        return {}, {name: reason for name in names}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    wanted = set(names)
    sites: dict[str, object] = {}
    reasons: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        site, reason = site_of(model, node, calls)
        if site is None:
            reasons[node.target] = reason
        else:
            sites[node.target] = site
    for name in names:
        if name not in sites and name not in reasons:
            reasons[name] = "not called in the traced forward"
    return sites, reasons
