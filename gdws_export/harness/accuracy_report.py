"""The results of `evaluate_accuracy`: per model and attack, clean and robust accuracy on
PyTorch and on the engine, with a Markdown table; and `SquareConfig`, the Square Attack's
settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from gdws_export.attacks.config import format_radius
from gdws_export.errors import InvalidInputError

# A replay that moves robust accuracy by more than this many points means the engine does not
# keep what PyTorch measured (numerics, precision or lowering): reported, not raised.
TRANSFER_TOLERANCE_POINTS = 0.5


@dataclass(frozen=True)
class SquareConfig:
    """The query-only Square Attack (L-inf). Defaults: eps 8/255, 1000 queries, p 0.05, seed 0.

    `rescale_schedule` stretches the paper's schedule for p (set for 10,000 queries) to
    `queries`; `SquareConfig.autoattack` gives AutoAttack's settings instead.

    Example:
        >>> SquareConfig(eps=8 / 255, queries=1000).describe()
        'Square-1000 (L-inf, eps=8/255, p_init=0.05, seed 0)'
        >>> SquareConfig.autoattack(8 / 255).describe()
        'Square-5000 (L-inf, eps=8/255, p_init=0.8, seed 0, schedule not rescaled)'
    """

    eps: float = 8 / 255
    queries: int = 1000
    p_init: float = 0.05
    seed: int = 0
    rescale_schedule: bool = True

    @classmethod
    def autoattack(cls, eps: float, queries: int = 5000, seed: int = 0) -> SquareConfig:
        """AutoAttack's Square ("standard" version): p_init 0.8, 5000 queries, its schedule
        for p not rescaled; fewer `queries` for a faster, weaker run."""
        return cls(eps=eps, queries=queries, p_init=0.8, seed=seed, rescale_schedule=False)

    def __post_init__(self) -> None:
        where = "SquareConfig"
        if not _finite_number(self.eps) or self.eps < 0:
            raise InvalidInputError(f"{where}: eps must be a finite number >= 0, got {self.eps!r}")
        for label, value in (("queries", self.queries), ("seed", self.seed)):
            low = 1 if label == "queries" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(
                    f"{where}: {label} must be an integer >= {low}, got {value!r}"
                )
        if not _finite_number(self.p_init) or not 0 < self.p_init <= 1:
            raise InvalidInputError(f"{where}: p_init must be in (0, 1], got {self.p_init!r}")
        if not isinstance(self.rescale_schedule, bool):
            raise InvalidInputError(
                f"{where}: rescale_schedule must be True or False, got {self.rescale_schedule!r}"
            )

    def describe(self) -> str:
        """RobustBench-style one line: attack, norm, eps, budget, seed."""
        schedule = "" if self.rescale_schedule else ", schedule not rescaled"
        return (
            f"Square-{self.queries} (L-inf, eps={format_radius(self.eps, 'linf')}, "
            f"p_init={self.p_init:g}, seed {self.seed}{schedule})"
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttackResult:
    """One attack against one model, described as RobustBench does (norm, eps, steps, samples).

    `target` is "pytorch" (white-box, or Square without an engine) or "engine" (Square run
    through the runtime). For white-box attacks with an engine, `engine_accuracy` is the
    robust accuracy of the engine on the same adversarial inputs, `transfer_gap_points` is
    engine minus PyTorch in percentage points, and `agreement` the fraction of adversarial
    inputs on which both predict the same class. `max_perturbation` is the largest distance
    (in the attack's norm) of an adversarial input from its clean image.
    """

    attack: str
    description: str
    norm: str
    eps: float
    steps: int
    samples: int
    target: str
    robust_accuracy: float
    max_perturbation: float
    config: dict
    engine_accuracy: float | None = None
    transfer_gap_points: float | None = None
    agreement: float | None = None
    mean_queries: float | None = None


@dataclass
class ModelAccuracy:
    """Clean accuracy and attack results of one model (and of its engine, when given).

    `worst_case_accuracy` is the headline robust accuracy: per image, correct clean and under
    every attack on every target measured (each white-box attack on PyTorch, its replay on the
    engine, Square), so an image counts only if every attack fails on it. It is at most the
    smallest robust accuracy of the rows, and lower when the attacks fool different images.
    For an INT8 engine evaluated with its fake-quantized twin as the PyTorch model, that is the
    minimum over PGD on the twin, its replay on the engine and Square on the engine.
    """

    name: str
    samples: int
    clean_accuracy: float
    engine_clean_accuracy: float | None = None
    engine: dict | None = None
    attacks: list[AttackResult] = field(default_factory=list)
    worst_case_accuracy: float | None = None

    def attack(self, description_or_name: str) -> AttackResult:
        """The first result whose description or attack name matches."""
        for result in self.attacks:
            if description_or_name in (result.description, result.attack):
                return result
        raise InvalidInputError(
            f"model {self.name!r} has no attack {description_or_name!r}; it has "
            f"{[r.description for r in self.attacks]}"
        )


@dataclass
class AccuracyReport:
    """Accuracy of every model on one data set: `evaluate_accuracy`'s result."""

    data: str
    samples: int
    batch_size: int
    models: list[ModelAccuracy] = field(default_factory=list)

    def model(self, name: str) -> ModelAccuracy:
        for model in self.models:
            if model.name == name:
                return model
        raise InvalidInputError(
            f"no accuracy for model {name!r}; models: {[m.name for m in self.models]}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AccuracyReport:
        models = [
            ModelAccuracy(**{**m, "attacks": [AttackResult(**a) for a in m["attacks"]]})
            for m in data["models"]
        ]
        return cls(data["data"], data["samples"], data["batch_size"], models)

    def to_markdown(self) -> str:
        """A Markdown section with one row per model and attack."""
        lines = [
            "## Accuracy",
            "",
            f"Data: {self.data or 'given tensors'}, {self.samples} samples, batch "
            f"{self.batch_size}. Robust = correct both clean and under attack.",
            "",
            "| model | attack | target | samples | clean % | robust % | engine clean % "
            "| engine robust % (replay) | gap (points) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.models:
            for a in m.attacks:
                gap = a.transfer_gap_points
                flag = " !" if gap is not None and abs(gap) > TRANSFER_TOLERANCE_POINTS else ""
                lines.append(
                    f"| {m.name} | {a.description} | {a.target} | {a.samples} "
                    f"| {_pct(m.clean_accuracy)} | {_pct(a.robust_accuracy)} "
                    f"| {_pct(m.engine_clean_accuracy)} | {_pct(a.engine_accuracy)} "
                    f"| {'' if gap is None else f'{gap:+.2f}'}{flag} |"
                )
            if not m.attacks:
                lines.append(
                    f"| {m.name} | clean (no attack) | pytorch | {m.samples} "
                    f"| {_pct(m.clean_accuracy)} | | {_pct(m.engine_clean_accuracy)} | | |"
                )
        worst = [m for m in self.models if m.worst_case_accuracy is not None]
        if worst:
            lines += [
                "",
                "Worst case per image (robust only if every attack above fails, on PyTorch and "
                "on the engine): "
                + ", ".join(f"{m.name} {_pct(m.worst_case_accuracy)} %" for m in worst)
                + ".",
            ]
        lines += [
            "",
            f"A gap beyond {TRANSFER_TOLERANCE_POINTS} points (marked !) means the engine does "
            "not keep the robustness PyTorch measured.",
        ]
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _finite_number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(float(value))
    )
