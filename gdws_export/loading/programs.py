"""Graph programs (torch.export, converted TorchScript) as editable eager modules.

`torch.export.load(...).module()` runs the graph's aten calls; its convolutions are calls of
`aten.conv2d`, not `nn.Conv2d` modules, so GDWS would find nothing to replace. `convert_convs`
turns each such call back into an `nn.Conv2d` under the weight's owner name, which is the
original module's name ("features.0"), so alphas computed on the eager model still apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.loading.detect import first_line

SAMPLE_BATCH = 2  # torch.export specializes batch sizes 0 and 1
_SHOWN = 4
# GraphModule.meta key: (min, max or None) of a program's dynamic batch, which its graph keeps
# checking; a re-export (`--target torch`) must declare the same range or torch.export fails.
BATCH_RANGE = "gdws_export_batch_range"


@dataclass
class ProgramModule:
    """An exported program made editable: the module, its input shape, its batch if fixed."""

    module: torch.fx.GraphModule
    input_shape: tuple[int, int, int] | None
    fixed_batch: int | None
    notes: list[str] = field(default_factory=list)


def torchscript_program(scripted, file: Path, shape: tuple[int, int, int]):
    """Convert a TorchScript module to a torch.export program (PyTorch's TS2EP converter).

    Raises:
        UnsupportedModelError: the converter rejects the module; the message says what else
            works (--arch, a .pt2 program, a state_dict).
    """
    try:
        from torch._export.converter import TS2EPConverter

        example = (torch.rand(SAMPLE_BATCH, *shape),)
        return TS2EPConverter(scripted, example).convert()
    except Exception as exc:  # the converter is young and rejects many constructs
        raise UnsupportedModelError(
            f"TorchScript archive {file} cannot be converted to an editable module "
            f"({type(exc).__name__}: {first_line(exc)}); pass --arch NAME to load its weights "
            "into a registered architecture, or save the model with torch.export.save (.pt2) "
            "or as a state_dict"
        ) from exc


def program_module(program, file: Path, shape: tuple[int, int, int] | None) -> ProgramModule:
    """A torch.export program as a plain `fx.GraphModule` with `nn.Conv2d` submodules.

    Raises:
        UnsupportedModelError: not one 4-D image input, or a batch fixed to more than one.
        InvalidInputError: `shape` contradicts the shape the program was exported for.
    """
    inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"{file} takes {len(inputs)} inputs; gdws-export handles one image tensor"
        )
    placeholder = next(n for n in program.graph.nodes if n.name == inputs[0].arg.name)
    dims = tuple(placeholder.meta["val"].shape)
    if len(dims) != 4:
        raise UnsupportedModelError(f"{file} takes a {len(dims)}-D input; expected (N, C, H, W)")
    static = [d if isinstance(d, int) else None for d in dims]
    recorded = tuple(static[1:]) if None not in static[1:] else None
    if shape is not None and recorded is not None and tuple(shape) != recorded:
        raise InvalidInputError(
            f"{file} was exported for inputs (N, {', '.join(map(str, recorded))}), not "
            f"{tuple(shape)}; fix --input-shape or leave it out"
        )
    fixed_batch = static[0]
    # Views in the graph are specialized to the batch it was exported with, and approximate
    # runs batches of one: only a dynamic batch or a batch of one can work.
    if fixed_batch is not None and fixed_batch != 1:
        raise UnsupportedModelError(
            f"{file} fixes the batch size to {fixed_batch}; export it again with a dynamic "
            "batch (dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) or a batch of 1"
        )
    exported = program.module()
    # A plain GraphModule: the exported wrapper refuses train()/eval(), which approximate uses.
    module = torch.fx.GraphModule(exported, exported.graph)
    if fixed_batch is None:
        module.meta[BATCH_RANGE] = _dim_range(program, dims[0])
    converted = convert_convs(module)
    shown = ", ".join(converted[:_SHOWN]) + (", ..." if len(converted) > _SHOWN else "")
    notes = [f"{len(converted)} conv(s) made editable modules ({shown or 'none'})"]
    if fixed_batch is not None:
        notes.append("the program fixes the batch size to 1: exported with a static batch")
    return ProgramModule(module.eval(), shape or recorded, fixed_batch, notes)


def batch_range(model: nn.Module) -> tuple[int, int | None]:
    """(min, max) batch sizes `model` accepts: the tightest range of the programs in it
    (max None: unbounded); (0, None) for a model holding none."""
    low, high = 0, None
    for module in model.modules():
        if not isinstance(module, torch.fx.GraphModule) or BATCH_RANGE not in module.meta:
            continue
        found_low, found_high = module.meta[BATCH_RANGE]
        low = max(low, found_low)
        if found_high is not None:
            high = found_high if high is None else min(high, found_high)
    return low, high


def _dim_range(program, dim) -> tuple[int, int | None]:
    """(min, max) of a symbolic input size in `program` (max None: unbounded)."""
    bounds = program.range_constraints.get(dim.node.expr)
    if bounds is None:
        return 0, None
    upper = float(bounds.upper)
    return int(bounds.lower), None if math.isinf(upper) else int(upper)


def convert_convs(module: torch.fx.GraphModule) -> list[str]:
    """Turn the graph's 2-D convolution calls into `nn.Conv2d` submodules, in place.

    A conv whose weight and bias are stored tensors of one owner ("features.0.weight",
    "features.0.bias") that no other node uses becomes a call of an `nn.Conv2d` registered as
    that owner ("features.0"), holding the same tensors. Other convs (computed or shared
    weights, 'same' padding, transposed) stay as they are, and GDWS leaves them alone.

    Returns:
        The names of the convs converted, in graph order.
    """
    aten = torch.ops.aten
    converted = []
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target not in (
            aten.conv2d.default,
            aten.convolution.default,
        ):
            continue
        args = _conv_args(node)
        if args is None:
            continue
        x, weight_node, bias_node, stride, padding, dilation, groups = args
        name = _owner(weight_node.target)
        if not _plain_holder(module.get_submodule(name)):
            continue
        conv = _conv_module(module, weight_node, bias_node, stride, padding, dilation, groups)
        if conv is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, conv)
        with module.graph.inserting_before(node):
            call = module.graph.call_module(name, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        module.graph.erase_node(node)
        converted.append(name)
    module.graph.eliminate_dead_code()
    module.recompile()
    return converted


def _conv_args(node):
    """(x, weight, bias, stride, padding, dilation, groups) of a conv node, None if unusable."""
    if node.target is torch.ops.aten.convolution.default:
        x, weight, bias, stride, padding, dilation, transposed, _, groups = node.args
        if transposed:
            return None
    else:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        defaults = (None, None, None, [1, 1], [0, 0], [1, 1], 1)
        values = dict(zip(names, defaults, strict=True))
        values.update(zip(names, node.args, strict=False))
        values.update(node.kwargs)
        if isinstance(values["padding"], str):
            return None  # 'same'/'valid' padding: rare in exported graphs, left as it is
        x, weight, bias, stride, padding, dilation, groups = values.values()
    if not _single_use_attr(weight) or (bias is not None and not _single_use_attr(bias)):
        return None
    owner = _owner(weight.target)
    if not owner or (bias is not None and _owner(bias.target) != owner):
        return None
    return x, weight, bias, list(stride), list(padding), list(dilation), int(groups)


def _single_use_attr(node) -> bool:
    return getattr(node, "op", None) == "get_attr" and len(node.users) == 1


def _conv_module(module, weight_node, bias_node, stride, padding, dilation, groups):
    weight = _attr(module, weight_node.target)
    bias = _attr(module, bias_node.target) if bias_node is not None else None
    if weight.dim() != 4 or len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        return None
    out_channels, per_group, kh, kw = weight.shape
    conv = nn.Conv2d(per_group * groups, out_channels, (kh, kw), stride=tuple(stride),
                     padding=tuple(padding), dilation=tuple(dilation), groups=groups,
                     bias=bias is not None, dtype=weight.dtype)  # fmt: skip
    conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return conv


def _owner(target: str) -> str:
    return target.rpartition(".")[0]


def _attr(module: nn.Module, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _plain_holder(holder: nn.Module) -> bool:
    """Whether `holder` holds nothing but a weight and a bias (so a conv may take its place)."""
    own = {n for n, _ in holder.named_parameters(recurse=False)}
    own |= {n for n, _ in holder.named_buffers(recurse=False)}
    return not list(holder.children()) and own <= {"weight", "bias"}
