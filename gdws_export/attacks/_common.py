"""Checks and helpers shared by the attacks; every failure is a one-line InvalidInputError."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from gdws_export.errors import InvalidInputError

NORMS = ("linf", "l2")


def check_eps(eps: float, where: str, name: str = "eps") -> float:
    """Return eps as a float, or raise if it is negative, NaN, infinite or not a number."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: {name} must be a number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{where}: {name} must be a finite number >= 0, got {eps!r}")
    return value


def check_positive_int(value: int, name: str, where: str) -> int:
    """Return value if it is an int >= 1 (bools are refused: `steps=True` is a bug)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{where}: {name} must be an integer >= 1, got {value!r}")
    return value


def check_norm(norm: str, where: str) -> str:
    """Return norm if it is one of NORMS."""
    if norm not in NORMS:
        raise InvalidInputError(f"{where}: unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    return norm


def check_images(x: torch.Tensor, where: str) -> torch.Tensor:
    """Return x detached, after checking it is a non-empty float batch with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidInputError(
            f"{where}: x must be a float tensor in [0, 1], got dtype {x.dtype} "
            "(convert uint8 images with x.float() / 255)"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise InvalidInputError(
            f"{where}: x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}"
        )
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError(f"{where}: x holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise InvalidInputError(
            f"{where}: x must lie in [0, 1] (normalization belongs inside the model), "
            f"got values in [{low:.4g}, {high:.4g}]"
        )
    return x


def check_labels(y: torch.Tensor, batch: int, where: str) -> torch.Tensor:
    """Return y as int64 on its own device, after checking it is a (batch,) integer vector."""
    if not isinstance(y, torch.Tensor):
        raise InvalidInputError(f"{where}: y must be a torch.Tensor, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidInputError(f"{where}: y must hold integer class labels, got dtype {y.dtype}")
    if tuple(y.shape) != (batch,):
        raise InvalidInputError(
            f"{where}: y must have shape ({batch},) to match x, got {tuple(y.shape)}"
        )
    return y.detach().long()


def check_logits(logits: torch.Tensor, y: torch.Tensor, where: str) -> None:
    """Check the model's output is (N, classes) and every label is a valid class index."""
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise InvalidInputError(
            f"{where}: the model must return logits of shape ({y.shape[0]}, classes), "
            f"got {tuple(logits.shape)}"
        )
    classes = logits.shape[1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise InvalidInputError(
            f"{where}: labels must lie in [0, {classes - 1}] for a model with {classes} "
            f"outputs, got labels in [{low}, {high}]"
        )


def warn_if_training(model: object, where: str, stacklevel: int = 3) -> None:
    """Warn when any submodule is in training mode: batch norm and dropout would then change
    the model between queries, and the attack would not measure the deployed model."""
    if isinstance(model, nn.Module) and any(module.training for module in model.modules()):
        warnings.warn(
            f"{where}: the model is in training mode; call model.eval() before attacking it "
            "unless you mean to attack the training-mode model (e.g. adversarial training)",
            RuntimeWarning,
            stacklevel=stacklevel,  # points at the user's call
        )


def uniform(
    shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """U[0, 1) samples on `like`'s device and dtype, drawn on the generator's own device so a
    CPU generator seeds CUDA attacks reproducibly."""
    device = generator.device if generator is not None else like.device
    sample = torch.rand(tuple(shape), generator=generator, device=device)
    return sample.to(device=like.device, dtype=like.dtype)


def normal(
    shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """N(0, 1) samples, drawn like `uniform`."""
    device = generator.device if generator is not None else like.device
    sample = torch.randn(tuple(shape), generator=generator, device=device)
    return sample.to(device=like.device, dtype=like.dtype)


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped (N, 1, ..., 1) to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))
