"""Layers shared by the architectures: input normalization inside the model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gdws_export.errors import InvalidInputError


def _floats(name: str, values: Sequence[float]) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"Normalize: {name} must be a sequence of numbers, one per channel (got {values!r})"
        ) from exc


class Normalize(nn.Module):
    """Per-channel `(x - mean) / std`, so that models take images in [0, 1].

    Adversarial attacks clip and step in [0, 1] pixel space; keeping the normalization inside
    the model lets them treat every model alike. With `mean` and `std` both None the layer is
    the identity.

    The buffers are not persistent (not in `state_dict`): checkpoints of the usual CIFAR
    repositories, which normalize outside the model, then load as they are, and the project's
    own checkpoints record mean and std in their `arch_kwargs` instead.

    Example:
        >>> norm = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
        >>> norm(torch.ones(1, 3, 2, 2)).unique().item()
        2.0
    """

    def __init__(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise InvalidInputError("Normalize: give both mean and std, or neither")
        if mean is None or std is None:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
            return
        mean_values = _floats("mean", mean)
        std_values = _floats("std", std)
        if len(mean_values) != len(std_values) or not mean_values:
            raise InvalidInputError(
                f"Normalize: mean has {len(mean_values)} values and std {len(std_values)}; "
                "give one value per input channel to each"
            )
        if not all(math.isfinite(v) for v in mean_values) or not all(
            math.isfinite(v) and v > 0 for v in std_values
        ):
            raise InvalidInputError(
                f"Normalize: mean must be finite and std positive (got mean={mean_values}, "
                f"std={std_values})"
            )
        mean_t = torch.tensor(mean_values, dtype=torch.float32)
        std_t = torch.tensor(std_values, dtype=torch.float32)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if self.mean is None:
            return "identity"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
