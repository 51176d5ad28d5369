"""`attack_copy(model)`: the same function as `model`, faster to attack in PyTorch.

A white-box attack runs a forward and a backward pass per step, so attacks take most of the
time of any robust-accuracy measurement (the paper table's included). The copy

- runs each GDWS conv as the dense conv it computes (one conv, not depthwise + 1x1);
- folds each BatchNorm that reads a conv's output, and nothing else does, into that conv's
  weights (eval-mode statistics): ONNX Runtime and TensorRT fold them the same way when they
  build the engine, so the copy is closer to what ships, and about 15 % faster to attack on
  the bundled models (2-core CPU, PGD step at batch 100);
- stops parameter gradients (attacks need input gradients only);
- keeps its tensors channels-last, which PyTorch's CPU convs run faster.

Its outputs match the model's up to float rounding (tests/test_attack_copy.py). It is for
evaluation only: in training mode its folded BatchNorms would not update.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils import fuse_conv_bn_eval

from gdws_export.gdws.selection import dense_copy, replace_module


def attack_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode that computes the same function and is faster to attack
    (module docstring); `model` is left unchanged."""
    # eval() again: tracing makes new container modules, in training mode.
    copied = _fold_batchnorms(dense_copy(model).eval()).eval()
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied.to(memory_format=torch.channels_last)


def _fold_batchnorms(model: nn.Module) -> nn.Module:
    """`model` (in eval mode) with each BatchNorm2d that only a Conv2d's output feeds, and that
    conv feeds nothing else, folded into the conv: a traced `fx.GraphModule` sharing the other
    modules with `model`. A model torch.fx cannot trace is returned as it is."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow and the like: keep the BatchNorms
        return model
    modules = dict(traced.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (
            isinstance(modules.get(node.target), nn.BatchNorm2d)
            and modules[node.target].running_mean is not None  # else eval uses batch stats
            and isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
            # A module called twice would be folded for both of its uses.
            and calls[node.target] == calls[source.target] == 1
        ):
            continue
        conv, norm = modules[source.target], modules[node.target]
        replace_module(traced, source.target, fuse_conv_bn_eval(conv, norm))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


__all__ = ["attack_copy"]
