"""The loaded model made ready to export: input shape, baked-in normalization, sanity checks."""

from __future__ import annotations

import torch
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.selection import count_macs, count_params
from gdws_export.loading import LoadedModel, load_model_file
from gdws_export.loading.detect import first_line
from gdws_export.methods import get_method
from gdws_export.models.layers import Normalize
from gdws_export.pipeline.config import ExportConfig


def load_configured_model(cfg: ExportConfig) -> LoadedModel:
    """The model file `cfg` names, loaded as its model options say (export and sweep)."""
    return load_model_file(
        cfg.model, arch=cfg.arch, num_classes=cfg.num_classes, arch_kwargs=cfg.arch_kwargs,
        trust_pickle=cfg.trust_pickle, input_shape=cfg.input_shape,
    )  # fmt: skip


def prepare_model(loaded: LoadedModel, cfg: ExportConfig):
    """(model to export, its (C, H, W) input shape, a description of its normalization).

    `--mean/--std` go into the model's own `Normalize` layer when it has an identity one
    (layer names unchanged), else into a `NormalizedInput` wrapper.

    Raises:
        InvalidInputError: no input shape known, or normalization asked of a model that
            already normalizes.
    """
    shape = tuple(cfg.input_shape or loaded.input_shape or ())
    if not shape:
        raise InvalidInputError(
            f"{loaded.path} does not record the input shape; pass --input-shape (e.g. 1x3x32x32)"
        )
    model = loaded.module
    if cfg.mean is None:
        inner = getattr(model, "normalize", None)
        if isinstance(inner, Normalize) and inner.mean is not None:
            return model, shape, f"{_mean_std(inner.mean, inner.std)}, inside the model"
        return model, shape, None
    if len(cfg.mean) not in (1, shape[0]):
        raise InvalidInputError(
            f"--mean/--std give {len(cfg.mean)} values but the input has {shape[0]} channels"
        )
    described = f"{_mean_std(cfg.mean, cfg.std)}, added by --mean/--std"
    inner = getattr(model, "normalize", None)
    if isinstance(inner, Normalize):
        if inner.mean is not None:
            raise InvalidInputError(
                f"{loaded.path} already normalizes its inputs inside "
                f"({_mean_std(inner.mean, inner.std)}); "
                "leave out --mean/--std"
            )
        model.normalize = Normalize(cfg.mean, cfg.std)  # keeps every layer name
        return model, shape, described
    return NormalizedInput(model, cfg.mean, cfg.std).eval(), shape, described


def _mean_std(mean, std) -> str:
    def short(values) -> str:
        values = values.flatten().tolist() if isinstance(values, torch.Tensor) else values
        return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"

    return f"mean {short(mean)}, std {short(std)}"


class NormalizedInput(nn.Module):
    """`model((x - mean) / std)`: bakes normalization into a model that lacks it.

    Layer names gain the prefix "model." (alphas files written for the bare model are
    matched either way).
    """

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def check_forward(model: nn.Module, shape, fixed_batch: int | None) -> int:
    """Run the model once; returns the number of outputs (classes)."""
    x = torch.rand(fixed_batch or 2, *shape)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # a user model can fail in any way; say where
        raise UnsupportedModelError(
            f"the model's forward fails on input shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{first_line(exc)}); check --input-shape"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        what = type(out).__name__ if not isinstance(out, torch.Tensor) else f"{out.dim()}-D tensor"
        raise UnsupportedModelError(
            f"the model returns a {what}; gdws-export exports classifiers returning one "
            "(batch, classes) tensor"
        )
    if not torch.isfinite(out).all():
        raise UnsupportedModelError("the model outputs NaN or Inf on random inputs in [0, 1]")
    return int(out[0].numel())


def match_alpha_names(alphas: dict, model: nn.Module, source: str) -> dict:
    """Alphas of a bare model apply to its NormalizedInput wrapper ("model." prefix)."""
    if isinstance(model, NormalizedInput) and not any(k.startswith("model.") for k in alphas):
        return {f"model.{k}": v for k, v in alphas.items()}
    return alphas


def match_layer_patterns(patterns: tuple[str, ...], model: nn.Module) -> tuple[str, ...]:
    """Layer names or patterns of a bare model, as they name its NormalizedInput wrapper's
    layers ("model." prefix), the way `match_alpha_names` maps alphas."""
    if isinstance(model, NormalizedInput):
        return tuple(p if p.startswith("model.") else f"model.{p}" for p in patterns)
    return tuple(patterns)


def no_replacement_reason(
    model: nn.Module, model_file: str, exclude: tuple[str, ...] = (), method: str = "gdws"
) -> str | None:
    """Why `method` can replace no layer of `model`, as the report says it ("no replaceable
    conv: ..., so the original ships"), or None when it can replace some
    (`Method.no_replacement_reason`).

    Raises:
        UnsupportedModelError: the model has no layer of the types the method replaces (for
            GDWS: no `nn.Conv2d` at all, not a CNN).
        InvalidInputError: an `exclude` pattern names no such layer.
    """
    return get_method(method).no_replacement_reason(model, model_file, exclude)


def count_macs_params(model: nn.Module, shape) -> tuple[int, int]:
    """Multiply-accumulates per image of every conv and matrix product, and the parameter
    count (`count_macs`, `count_params`: graph modules included)."""
    return count_macs(model, shape), count_params(model)
