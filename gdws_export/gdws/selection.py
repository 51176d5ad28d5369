"""Which convs of a model GDWS may replace, and why the others are left alone."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.conv import GDWSConv2d, is_depthwise


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
    return record_forward(model, names, input_shape, lambda _m, _i, out: tuple(out.shape[-2:]))


def record_forward(
    model: nn.Module,
    names: Sequence[str],
    input_shape: Sequence[int],
    measure: Callable[[nn.Module, tuple, torch.Tensor], Any],
) -> dict[str, Any]:
    """`measure(module, inputs, output)` of each named module that one zero input of shape
    (C, H, W) reaches (eval mode, no gradients); modules the forward skips are left out.

    Raises:
        UnsupportedModelError: the forward fails (a user model can fail in any way; the
            message says on which shape).
    """
    found: dict[str, Any] = {}

    def hook(name: str):
        return lambda module, inputs, output: found.__setitem__(
            name, measure(module, inputs, output)
        )

    hooks = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        _run_once(model, input_shape, hooks)
    except Exception as exc:
        raise UnsupportedModelError(
            f"model forward failed on input shape {tuple(input_shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    return found


def resolve_input_shape(
    model: nn.Module, input_shape: Sequence[int] | None, *, needed_by: str | None = None
) -> tuple[int, ...] | None:
    """`input_shape`, else `model.input_shape` (registry models carry it), as (C, H, W).

    Without either, None, or an error naming `needed_by` when that is given (what needs it).

    Example:
        >>> resolve_input_shape(model, None, needed_by="mac_ratio")  # doctest: +SKIP
        (3, 32, 32)
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        if needed_by is None:
            return None
        raise InvalidInputError(
            f"{needed_by} needs the input shape: pass input_shape=(C, H, W) "
            "(registry models carry it as model.input_shape)"
        )
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"input_shape must be (C, H, W) of positive sizes, got {shape}")
    return shape


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one image of shape (C, H, W) through every conv and matrix
    product that runs (GDWS layers count through their depthwise and 1x1 convs).

    Counted at the aten level (`FlopCounterMode`, FLOPs = 2 x MACs), not by module type, so a
    graph module (a loaded .pt2 or TorchScript program) counts its `aten.linear`, `addmm` and
    remaining conv calls as well as its `nn.Conv2d` modules. The model runs once in eval mode;
    its mode is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _run_once(model, input_shape, [])
    return int(counter.get_total_flops()) // 2


# Arguments of aten ops that hold the layer's own weights (learned or stored tensors).
_WEIGHT_ARGS = {
    **dict.fromkeys(("aten.linear.default", "aten.conv1d.default", "aten.conv2d.default",
                     "aten.conv3d.default", "aten.convolution.default", "aten.batch_norm.default",
                     "aten._native_batch_norm_legit_no_training.default"), (1, 2)),
    **dict.fromkeys(("aten.layer_norm.default", "aten.group_norm.default"), (2, 3)),
    **dict.fromkeys(("aten.mm.default", "aten.matmul.default", "aten.prelu.default"), (1,)),
    "aten.addmm.default": (0, 2),
    "aten.embedding.default": (0,),
}  # fmt: skip
# Ops that only reshape or re-lay a weight on its way to its user (Linear as t + addmm).
_WEIGHT_VIEWS = {"aten.t.default", "aten.permute.default", "aten.transpose.int",
                 "aten.view.default", "aten.reshape.default", "aten.contiguous.default",
                 "aten.unsqueeze.default", "aten.squeeze.dim", "aten.detach.default"}  # fmt: skip


def count_params(model: nn.Module) -> int:
    """Parameters of `model`, each tensor once, and in its graph modules (loaded .pt2 and
    TorchScript programs) also the stored tensors the graph uses as weights without holding
    them as parameters: TorchScript's converter keeps Linear weights as buffers, which
    `parameters()` misses. Running statistics (BatchNorm) do not count, as in eager models."""
    tensors = {id(p): p for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, fx.GraphModule):
            for tensor in _graph_weights(module):
                tensors.setdefault(id(tensor), tensor)
    return sum(t.numel() for t in tensors.values())


def _graph_weights(module: fx.GraphModule) -> list[torch.Tensor]:
    """The stored tensors (get_attr) that the graph's calls take as weight arguments."""
    found = []
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        for index in _WEIGHT_ARGS.get(str(node.target), ()):
            source = node.args[index] if index < len(node.args) else None
            while isinstance(source, fx.Node) and str(source.target) in _WEIGHT_VIEWS:
                source = source.args[0]
            if isinstance(source, fx.Node) and source.op == "get_attr":
                value = _attribute(module, source.target)
                if isinstance(value, torch.Tensor):
                    found.append(value)
    return found


def _attribute(module: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name, None)


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
