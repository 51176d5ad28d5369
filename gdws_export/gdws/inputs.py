"""The calibration inputs that sensitivities and the 1x1 refit measure a model on.

`noise_gains`, `input_moments`, `calibrated_gains` and `refit_pointwise` all take the first
`samples` images of the data, in batches, and attack them with one seeded PGD; the settings are
one `CalibrationConfig` (attacks/config.py), and the loops are here, written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from gdws_export._progress import tick
from gdws_export.attacks.config import CalibrationConfig
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.selection import ConvSite, find_convs

# What the four functions accept as data: a pair of tensors, or an iterable of such batches.
CalibrationData = tuple[torch.Tensor, torch.Tensor] | Iterable[Any]


def first_samples(
    data: CalibrationData, samples: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches holding the first `samples` samples of `data`."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        if len(images) != len(labels):
            raise InvalidInputError(f"{len(images)} images but {len(labels)} labels")
        data = [
            (images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    left = samples
    for batch in data:
        if left <= 0:
            break
        x, y = batch[0][:left], batch[1][:left]
        yield x, y
        left -= len(x)


def calibration_batches(
    model: nn.Module, data: CalibrationData, config: CalibrationConfig, *, attack: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches of `config.samples` images on the model's device and dtype, x
    replaced by its PGD images when `attack` and `config.attack == "pgd"`."""
    param = next(model.parameters())
    # One generator for every batch: the random starts follow from the seed alone.
    generator = torch.Generator(device=param.device).manual_seed(config.seed)
    for x, y in first_samples(data, config.samples, config.batch_size):
        x, y = x.to(param.device, param.dtype), y.to(param.device)
        if attack and config.attack == "pgd":
            from gdws_export.attacks import pgd

            x = pgd(model, x, y, eps=config.eps, steps=config.steps, step_size=config.step_size,
                    norm=config.norm, generator=generator)  # fmt: skip
        tick(len(x))
        yield x, y


def calibration_images(
    model: nn.Module, data: CalibrationData, config: CalibrationConfig, *, attack: bool = True
) -> torch.Tensor:
    """The images of `calibration_batches`, in one tensor."""
    batches = [x.detach() for x, _ in calibration_batches(model, data, config, attack=attack)]
    if not batches:
        raise InvalidInputError("data holds no samples")
    return torch.cat(batches)


def clean_and_attacked(
    model: nn.Module, data: CalibrationData, config: CalibrationConfig
) -> list[torch.Tensor]:
    """[clean images], plus [their PGD images against `model`] when `config.attack` is "pgd"."""
    images = [calibration_images(model, data, config, attack=False)]
    if config.attack == "pgd":
        images.append(calibration_images(model, data, config))
    return images


def approximable_sites(
    model: nn.Module,
    skip_first: bool,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> list[ConvSite]:
    """The convs GDWS can approximate among those chosen; raises when there is none."""
    sites = [s for s in find_convs(model, skip_first=skip_first, include=include, exclude=exclude)
             if s.skip_reason is None]  # fmt: skip
    if not sites:
        raise UnsupportedModelError("the model has no conv that GDWS can approximate")
    return sites
