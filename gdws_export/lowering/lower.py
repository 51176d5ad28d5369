"""Replace every GDWS conv of a model by its chosen lowering form (see `forms`, `fold`)."""

from __future__ import annotations

import copy

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.lowering.fold import FoldSite, expand_outputs, set_submodule
from gdws_export.lowering.forms import (
    fold_slots,
    fold_source_index,
    is_form,
    lower_layer,
)


def gdws_layers(model: nn.Module) -> dict[str, GDWSConv2d]:
    """The GDWS convs of `model` by module name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GDWSConv2d)}


def lower_model(
    model: nn.Module,
    forms: dict[str, str],
    *,
    sites: dict[str, FoldSite] | None = None,
    originals: dict[str, nn.Conv2d] | None = None,
    align: int = 1,
) -> nn.Module:
    """A copy of `model` with each GDWS conv replaced by the form `forms[name]`.

    Args:
        model: a model holding `GDWSConv2d` modules (left unchanged).
        forms: module name -> a lowering form (see `forms`); GDWS convs not named here keep
            the reference form ("gather").
        sites: fold sites (from `find_fold_sites`), needed for layers whose form is "fold".
        originals: module name -> the original conv, shipped for layers whose form is
            "dense"; a layer without one ships its GDWS weights made dense.
        align: pad channel counts to a multiple of this with zero kernels (see
            `forms.pad_kernels`); 1 pads nothing.
    """
    lowered = copy.deepcopy(model)
    layers = gdws_layers(lowered)
    sites = sites or {}
    originals = {k: copy.deepcopy(v) for k, v in (originals or {}).items()}
    for name, form in forms.items():
        if name not in layers:
            raise InvalidInputError(f"{name!r} is not a GDWS conv of the model")
        if not is_form(form):
            raise InvalidInputError(f"unknown lowering form {form!r} for layer {name!r}")
        if fold_slots(form) is not None and name not in sites:
            raise InvalidInputError(f"layer {name!r} cannot fold (no fold site found)")

    # Folds first: they widen producers, which may themselves be GDWS convs lowered below.
    # A fold's index depends only on the consumer's input side, which widening leaves alone.
    for name, form in forms.items():
        slots = fold_slots(form)
        if slots is None:
            continue
        site = sites[name]
        index = fold_source_index(layers[name], slots, align)
        if site.producer in layers:
            producer = layers[site.producer]
        else:
            producer = lowered.get_submodule(site.producer)
        widened = expand_outputs(producer, index)
        set_submodule(lowered, site.producer, widened)
        if site.producer in layers:
            layers[site.producer] = widened
        if site.producer in originals:
            originals[site.producer] = expand_outputs(originals[site.producer], index)
        for bn in site.batchnorms:
            set_submodule(lowered, bn, expand_outputs(lowered.get_submodule(bn), index))

    for name, gdws in layers.items():
        form = forms.get(name, "gather")
        module = lower_layer(gdws, form, original=originals.get(name), align=align)
        set_submodule(lowered, name, module.train(gdws.training))
    return lowered


def put_back_originals(model: nn.Module, original: nn.Module, layers: list[str]) -> None:
    """Put `original`'s convs back into `model` at `layers` (in place).

    The one place a shipped PyTorch model is made: the layers an export shipped as their
    original conv ("dense" with the original given) hold that conv again, so what PyTorch
    runs, attacks and saves (`--target torch`) is what the ONNX graph computes.
    """
    for name in layers:
        set_submodule(model, name, copy.deepcopy(original.get_submodule(name)))


__all__ = ["gdws_layers", "lower_model", "put_back_originals"]
