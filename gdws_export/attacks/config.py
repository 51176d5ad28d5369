"""`AttackConfig`: one validated, JSON-friendly description of a white-box attack, and
`run_attack`, which runs it reproducibly from its seed. `CalibrationConfig`: the images and
PGD attack that sensitivities and the 1x1 refit measure a model on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from gdws_export.attacks._common import (
    check_eps,
    check_images,
    check_labels,
    check_norm,
    check_positive_int,
)
from gdws_export.attacks.gradient import Model, default_step_size, fgsm, pgd
from gdws_export.errors import InvalidInputError

ATTACK_NAMES = ("pgd", "fgsm", "none")
CALIBRATION_ATTACKS = ("pgd", None)


@dataclass(frozen=True)
class AttackConfig:
    """An attack and its settings. Defaults: PGD-10, L-inf, eps 8/255 (RobustBench's
    CIFAR-10 setting), step 2.5 * eps / steps, one random start, seed 0.

    `name` is "pgd", "fgsm" or "none" (clean accuracy); FGSM uses only norm and eps.

    Example:
        >>> AttackConfig("pgd", eps=8 / 255, steps=20).describe()
        'PGD-20 (L-inf, eps=8/255, step=1/255, 1 restart, random start, seed 0)'
    """

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float | None = None
    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        where = "AttackConfig"
        if self.name not in ATTACK_NAMES:
            raise InvalidInputError(
                f"{where}: unknown attack {self.name!r}; use one of {', '.join(ATTACK_NAMES)}"
            )
        _check_shared(self, where)
        if self.step_size == 0:
            raise InvalidInputError(f"{where}: step_size must be > 0 or None, got 0")
        check_positive_int(self.steps, "steps", where)
        check_positive_int(self.restarts, "restarts", where)
        if not isinstance(self.random_start, bool):
            raise InvalidInputError(
                f"{where}: random_start must be True or False, got {self.random_start!r}"
            )

    @property
    def resolved_step_size(self) -> float:
        """The PGD step size that runs: step_size, or 2.5 * eps / steps when it is None."""
        if self.step_size is not None:
            return self.step_size
        return default_step_size(self.eps, self.steps)

    def describe(self) -> str:
        """A RobustBench-style one-line description, e.g. 'PGD-10 (L-inf, eps=8/255, ...)'."""
        if self.name == "none":
            return "clean (no attack)"
        norm = "L-inf" if self.norm == "linf" else "L2"
        eps = format_radius(self.eps, self.norm)
        if self.name == "fgsm":
            return f"FGSM ({norm}, eps={eps})"
        restarts = f"{self.restarts} restart{'s' if self.restarts > 1 else ''}"
        start = "random start" if self.random_start else "no random start"
        step = format_radius(self.resolved_step_size, self.norm)
        return (
            f"PGD-{self.steps} ({norm}, eps={eps}, step={step}, {restarts}, {start}, "
            f"seed {self.seed})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackConfig:
        """Rebuild a config saved by `to_dict`; unknown keys are an error, not ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"AttackConfig: unknown keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**data)


@dataclass(frozen=True)
class CalibrationConfig:
    """The inputs a model is calibrated on: its first `samples` images and, with
    `attack="pgd"`, their PGD images (attack=None: clean images only).

    Shared by `noise_gains`, `input_moments`, `calibrated_gains` and `refit_pointwise`, which
    also take every field as a keyword argument (`eps=0.1` overrides `config.eps`). Defaults:
    PGD-10, L-inf, eps 8/255 in steps of 2/255 (the paper's), 512 images in batches of 128,
    seed 0. One generator seeded with `seed` drives the random starts of every batch.

    Example:
        >>> CalibrationConfig(eps=0.1, step_size=0.025).scaled(2.0).eps
        0.2
    """

    attack: str | None = "pgd"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = 2 / 255
    norm: str = "linf"
    samples: int = 512
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        where = "CalibrationConfig"
        if self.attack not in CALIBRATION_ATTACKS:
            raise InvalidInputError(
                f"{where}: attack must be 'pgd' or None (clean inputs), got {self.attack!r}"
            )
        _check_shared(self, where)
        for name in ("steps", "samples", "batch_size"):
            check_positive_int(getattr(self, name), name, where)

    @classmethod
    def resolve(
        cls, config: CalibrationConfig | None = None, **overrides: Any
    ) -> CalibrationConfig:
        """`config` (defaults when None) with `overrides` applied; unknown names are an error.

        Example:
            >>> CalibrationConfig.resolve(None, samples=64).samples
            64
        """
        if config is not None and not isinstance(config, cls):
            raise InvalidInputError(
                f"calibration must be a CalibrationConfig, got {type(config).__name__}"
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown calibration settings {unknown}; known ones are {sorted(known)}"
            )
        return dataclasses.replace(config or cls(), **overrides)

    def scaled(self, factor: float) -> CalibrationConfig:
        """The same settings with eps and step_size multiplied by `factor`."""
        step = None if self.step_size is None else self.step_size * factor
        return dataclasses.replace(self, eps=self.eps * factor, step_size=step)


def _check_shared(config: AttackConfig | CalibrationConfig, where: str) -> None:
    """The checks both configs make: norm, eps and step_size (finite, >= 0; made floats in
    place) and seed (an integer >= 0)."""
    check_norm(config.norm, where)
    object.__setattr__(config, "eps", check_eps(config.eps, where))
    if config.step_size is not None:
        step = check_eps(config.step_size, where, name="step_size")
        object.__setattr__(config, "step_size", step)
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"{where}: seed must be an integer >= 0, got {seed!r}")


def run_attack(
    model: Model, x: torch.Tensor, y: torch.Tensor, config: AttackConfig
) -> torch.Tensor:
    """Run the attack `config` describes; the same config and inputs give the same result.

    Args:
        model: maps [0, 1] images to logits; put it in eval mode first.
        x: images in [0, 1], shape (N, ...).
        y: integer labels, shape (N,).
        config: the attack; its seed drives the random starts.

    Returns:
        The adversarial images (a copy of x for "none").
    """
    if not isinstance(config, AttackConfig):
        raise InvalidInputError(
            f"run_attack: config must be an AttackConfig, got {type(config).__name__}"
        )
    if config.name == "none":
        x = check_images(x, "run_attack")
        check_labels(y, x.shape[0], "run_attack")
        return x.clone()
    if config.name == "fgsm":
        return fgsm(model, x, y, eps=config.eps, norm=config.norm)
    generator = torch.Generator().manual_seed(config.seed)
    return pgd(model, x, y, eps=config.eps, step_size=config.step_size, steps=config.steps,
               norm=config.norm, random_start=config.random_start, restarts=config.restarts,
               generator=generator)  # fmt: skip


def format_radius(value: float, norm: str) -> str:
    """k/255 for L-inf radii that are whole numbers of 8-bit grey levels, else the number."""
    levels = value * 255
    if norm == "linf" and value > 0 and abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{value:g}"
