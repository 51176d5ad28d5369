"""`--sensitivity auto`: choose the sensitivity measure per model, on held-out images.

No one measure kept the most robust accuracy on every bundled model under the 1x1 refit
(benchmarks/LOG.md): unweighted alphas ("none") are best on the robust VGG-16 (calibrated
ones lost 15 points there at MAC ratio 0.25), calibrated ones on the robust PreActResNet-18
(none lost 1.7 points at 0.2, calibrated 0.1; PGD-100 on 1000 test images, paired). Where the
choice matters the gaps are wide, so a short attack on a few hundred images tells them apart:
each candidate's GDWS model, built as the export builds it (same budget, refit included), is
attacked with PGD-10 at the threat model's eps on calibration images kept out of its fit, and
the one that keeps the most images right both clean and under attack ships (a tie keeps the
earlier candidate). On the bundled models this picked the measure that was best on the test
set in all three settings tried (benchmarks/LOG.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gdws_export.attacks import AttackConfig
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import attack_batched, predict_torch
from gdws_export.harness.attack_copy import attack_copy

# Candidates, in order of preference on a tie: unweighted first (the default with the refit
# before `auto`, best on VGG-16), then calibrated (best on PreActResNet-18). Relative alphas
# are not tried: under the refit they never beat unweighted ones on the bundled models
# (the retired refit_measures.py, benchmarks/LOG.md: 0.0 to 1.4 points behind) and lost
# 19 points on PreActResNet-18 at 0.2.
AUTO_MEASURES = ("none", "calibrated")
MIN_HELD_OUT = 64  # fewer cannot tell the measures apart; `auto` then keeps the first
SELECTION_STEPS = 10


@dataclass(frozen=True)
class MeasureTrial:
    """One candidate measure on the held-out images: accuracies as fractions, and the seconds
    its model took to build (alphas, approximation, refit) and to attack."""

    measure: str
    clean: float
    robust: float
    build_seconds: float
    attack_seconds: float


@dataclass(frozen=True)
class MeasureChoice:
    """What `choose_measure` compared and what it chose."""

    chosen: str
    held_out: int
    attack: str
    trials: list[MeasureTrial]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MeasureChoice:
        return cls(**{**data, "trials": [MeasureTrial(**t) for t in data["trials"]]})

    def table(self) -> str:
        """Markdown rows: each candidate's clean and robust accuracy, the chosen one marked."""
        lines = ["| measure | clean % | robust % | chosen |", "|---|---:|---:|---|"]
        for t in self.trials:
            mark = "yes" if t.measure == self.chosen else ""
            lines.append(f"| {t.measure} | {100 * t.clean:.1f} | {100 * t.robust:.1f} | {mark} |")
        return "\n".join(lines)


def selection_attack(eps: float, seed: int = 0, norm: str = "linf") -> AttackConfig:
    """The attack candidates are judged by: PGD-10 at the threat model's eps and norm."""
    return AttackConfig("pgd", norm=norm, eps=eps, step_size=eps / 4, steps=SELECTION_STEPS,
                        seed=seed)  # fmt: skip


def judge(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of `x`: right clean, and right both clean and under `attack` (robust).

    The same images, attack and seed give paired outcomes for different models, as the
    measure choice and the operating-point search compare them."""
    clean, robust, _ = judge_with_images(model, x, y, attack, batch_size)
    return clean, robust


def judge_with_images(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`judge`, and the adversarial images (to replay on an engine)."""
    judged = attack_copy(model)  # the same function, attacked faster
    x_adv = attack_batched(judged, x, y, attack, batch_size)
    clean = predict_torch(judged, x, batch_size).argmax(1) == y
    robust = clean & (predict_torch(judged, x_adv, batch_size).argmax(1) == y)
    return clean, robust, x_adv


def choose_measure(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig,
    *,
    build_seconds: Mapping[str, float] | None = None,
    batch_size: int = 128,
) -> MeasureChoice:
    """The candidate model that keeps the most of `x` right both clean and under `attack`.

    Args:
        models: measure -> its GDWS model, in order of preference on a tie.
        x, y: held-out images in [0, 1] and their labels (not used to build the models).
        attack: the white-box attack each model is judged under (`selection_attack`).
        build_seconds: measure -> seconds its model took to build, for the report.
        batch_size: images per attack batch.

    Returns:
        A MeasureChoice naming the chosen measure, with every candidate's accuracies.

    Example:
        >>> choice = choose_measure({"none": a, "calibrated": b}, x, y, selection_attack(0.1))
        >>> choice.chosen  # doctest: +SKIP
        'calibrated'
    """
    if not models:
        raise InvalidInputError("choose_measure: no candidate models given")
    if len(x) != len(y) or len(x) == 0:
        raise InvalidInputError(
            f"choose_measure: {len(x)} images and {len(y)} labels; give as many labels as "
            "images, at least one"
        )
    trials = []
    for measure, model in models.items():
        start = time.perf_counter()
        clean, robust = judge(model, x, y, attack, batch_size)
        trials.append(
            MeasureTrial(measure, float(clean.float().mean()), float(robust.float().mean()),
                         float((build_seconds or {}).get(measure, 0.0)),
                         time.perf_counter() - start)
        )  # fmt: skip
    best = max(trials, key=lambda t: t.robust)  # max keeps the first of equals
    return MeasureChoice(best.measure, len(x), attack.describe(), trials)


__all__ = [
    "AUTO_MEASURES",
    "MIN_HELD_OUT",
    "MeasureChoice",
    "MeasureTrial",
    "choose_measure",
    "judge",
    "judge_with_images",
    "selection_attack",
]
