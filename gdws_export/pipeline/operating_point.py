"""The operating point: the fastest GDWS model whose robust accuracy stays within a budget
(or, with `--min-speedup`, the most robust one at least that much faster).

Without an explicit budget (`--mac-ratio`, `--time-ratio`, `--beta`) and with calibration data,
the export searches for its own MAC ratio: the smallest one (the fewest MACs, the fastest
engine) whose robust accuracy on held-out calibration images is within `max_drop` points of
the original's. Robust accuracy falls as the ratio falls, so a bisection finds the boundary:
each probe builds the model as the export ships it (alphas, approximation, 1x1 refit) at one
ratio and attacks it on the held-out images; a probe within the budget moves the upper end
down, one outside it moves the lower end up. On a log scale between `RATIO_RANGE`'s ends, four
probes leave the boundary within a factor of 10^(1/16) = 1.155 (e.g. 0.2 against 0.23), and
the search builds four models (the first probe also chooses the sensitivity measure, so it
builds one per candidate measure).

Every comparison is paired: the original and each candidate are attacked on the same held-out
images, with the same attack and seed, and the drop counts the images the candidate loses
(right under attack for the original, not for it) less those it gains. A 95 % interval on the
drop (an Agresti-Min adjusted Wald interval for paired proportions) sorts each probe into
"passes" (the whole interval within the budget), "fails" (the whole interval outside it) or
"unresolved". The search ships the fastest probe that is not refuted and whose measured drop
is within the budget; when that probe's interval still reaches past the budget, the report
says so and how many held-out images would resolve it.

Which layers stay exact is searched too. One sensitive layer (say the second conv of a
VGG-16) can refute every deep cut although the rest of the network bears it. After the
bisection, the refuted probe nearest the boundary is taken apart: each of its GDWS layers is put
back to its original conv, one at a time, and the layers are ranked by the error under attack
their GDWS form costs per MAC it saves (`rank_exact_layers`): the distance of the logits from
the original's (`logit_error`) on the *calibration* images and the original's PGD images of
them (the fit split, not the held-out judge). A continuous error ranks layers where robust
accuracy on a few hundred images would tie, and each layer costs one forward pass. The
best-ranked layer is then kept exact (`--exclude`) and the MAC ratio bisected again below the
shipped probe's, with `EXACT_PROBES` probes judged on the held-out images as before; the
next-ranked layer is added while that keeps finding cheaper passing probes, up to
`MAX_EXACT_LAYERS`. Ranking on other images than the judge keeps the choice of layer from
being fitted to the judge's noise. The search so builds at most SEARCH_PROBES +
MAX_EXACT_LAYERS * EXACT_PROBES models (plus one per extra measure at the first probe),
attacks the calibration images once, and runs them through the probe once per GDWS layer.
Every probe is priced by its MACs: the cheapest eligible one ships.

`--min-speedup S` turns the search around: each probe is also exported with the export's
lowering and timed against the original graph on ONNX Runtime (interleaved, medians, at
`--batch` and `--threads`); a probe slower than S moves the search to deeper cuts, a faster
one to shallower cuts, and the largest ratio that ran at least S times faster ships: robust
accuracy falls as the ratio falls, so that one is the most robust.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

DEFAULT_MAX_ROBUST_DROP = 0.5  # points of robust accuracy
RATIO_RANGE = (0.1, 1.0)  # MAC ratios searched; 1.0 is the original's cost
SEARCH_PROBES = 4
MAX_EXACT_LAYERS = 2  # layers the search may keep exact beyond --exclude
EXACT_PROBES = 3  # ratios bisected per kept-exact layer
Z_95 = 1.959964


@dataclass(frozen=True)
class PairedDrop:
    """Robust accuracy lost against the original on the same images, and its 95 % interval.

    Attributes:
        images: images compared.
        lost: images right under attack for the original, wrong for the candidate.
        gained: images wrong for the original, right for the candidate.
    """

    images: int
    lost: int
    gained: int

    @classmethod
    def from_outcomes(cls, original: torch.Tensor, candidate: torch.Tensor) -> PairedDrop:
        """From per-image outcomes (True: right both clean and under attack)."""
        original, candidate = original.bool(), candidate.bool()
        return cls(len(original), int((original & ~candidate).sum()),
                   int((~original & candidate).sum()))  # fmt: skip

    @property
    def points(self) -> float:
        """The drop in percentage points (negative: the candidate is more robust)."""
        return 100.0 * (self.lost - self.gained) / self.images

    def interval(self) -> tuple[float, float]:
        """95 % interval on the drop, in points (Agresti-Min: half a pair added to each
        discordant count, so a handful of disagreements does not give a zero-width interval)."""
        n = self.images + 2
        lost, gained = self.lost + 0.5, self.gained + 0.5
        diff = (lost - gained) / n
        se = math.sqrt(max((lost + gained) / n - diff**2, 0.0) / n)
        return 100.0 * (diff - Z_95 * se), 100.0 * (diff + Z_95 * se)

    def images_to_resolve(self, max_drop: float) -> int | None:
        """About how many images would put the upper end of the interval within `max_drop`
        at the same rates; None when the measured drop itself exceeds it."""
        low, high = self.interval()
        centre = (low + high) / 2
        if centre >= max_drop:
            return None
        if high <= max_drop:
            return self.images
        scale = ((high - centre) / (max_drop - centre)) ** 2
        return math.ceil(self.images * scale)


@dataclass
class Probe:
    """One candidate built and judged: its MAC ratio, measure and held-out accuracies."""

    mac_ratio: float
    measure: str
    clean: float
    robust: float
    drop: PairedDrop
    macs: int
    seconds: float
    speedup: float | None = None  # measured on the target, with `--min-speedup` only
    exact: tuple[str, ...] = ()  # layers the search kept exact (beyond --exclude)

    def verdict(self, max_drop: float) -> str:
        """ "passes", "fails" or "unresolved" (module docstring)."""
        low, high = self.drop.interval()
        if high <= max_drop:
            return "passes"
        if low > max_drop:
            return "fails"
        return "unresolved"

    def eligible(self, max_drop: float) -> bool:
        """Not refuted, and the measured drop within the budget: may ship."""
        return self.verdict(max_drop) != "fails" and self.drop.points <= max_drop

    def to_dict(self, max_drop: float) -> dict:
        data = asdict(self)
        data["exact"] = list(self.exact)
        low, high = self.drop.interval()
        data.update(drop_points=round(self.drop.points, 3), interval=[round(low, 3),
                    round(high, 3)], verdict=self.verdict(max_drop))  # fmt: skip
        return data


@dataclass
class SearchResult:
    """What the search built, what it shipped and why."""

    goal: str
    max_drop: float
    held_out: int
    attack: str
    original_clean: float
    original_robust: float
    probes: list[Probe]
    chosen: Probe | None
    reason: str
    warnings: list[str] = field(default_factory=list)
    original_macs: int = 0
    exact_ranking: list[ExactLayer] = field(default_factory=list)
    exact_note: str = ""  # what the search of the layers to keep exact tried

    def to_dict(self) -> dict:
        return {
            "goal": self.goal,
            "max_robust_drop": self.max_drop if math.isfinite(self.max_drop) else None,
            "held_out": self.held_out,
            "attack": self.attack,
            "original": {"clean": self.original_clean, "robust": self.original_robust},
            "probes": [p.to_dict(self.max_drop) for p in self.probes],
            "chosen": None if self.chosen is None else self.probes.index(self.chosen),
            "reason": self.reason,
            "warnings": list(self.warnings),
            "original_macs": self.original_macs,
            "exact_ranking": [asdict(layer) for layer in self.exact_ranking],
            "exact_note": self.exact_note,
        }


def choose_operating_point(
    probes: list[Probe], max_drop: float
) -> tuple[Probe | None, str, list[str]]:
    """The fastest eligible probe (the fewest MACs), why, and warnings.

    Returns:
        (chosen probe or None when no probe may ship, the reason, warnings such as "too few
        images to resolve the budget").

    Example:
        >>> chosen, reason, warnings = choose_operating_point(probes, 0.5)  # doctest: +SKIP
    """
    eligible = [p for p in probes if p.eligible(max_drop)]
    if not eligible:
        reason = (
            f"no candidate kept robust accuracy within {max_drop:g} points of the original's "
            "on the held-out images: the original ships"
        )
        return None, reason, []
    chosen = min(eligible, key=lambda p: (p.macs, p.mac_ratio, p.drop.points))
    low, high = chosen.drop.interval()
    exact = f", {', '.join(chosen.exact)} kept exact" if chosen.exact else ""
    reason = (
        f"the fewest MACs within the budget: MAC ratio {chosen.mac_ratio:.3f} ({chosen.measure} "
        f"alphas{exact}) lost {chosen.drop.points:+.2f} points (95 % interval {low:+.2f} .. "
        f"{high:+.2f}) against a budget of {max_drop:g}"
    )
    warnings = []
    if chosen.verdict(max_drop) == "unresolved":
        needed = chosen.drop.images_to_resolve(max_drop)
        warnings.append(
            f"{chosen.drop.images} held-out images cannot resolve a {max_drop:g}-point budget: the "
            f"shipped candidate's 95 % interval reaches {high:+.2f} points"
            + (f"; about {needed} images would" if needed else "")
            + " (pass more --calib images or a larger --held-out-samples)"
        )
    return chosen, reason, warnings


def choose_for_speed(
    probes: list[Probe], min_speedup: float
) -> tuple[Probe | None, str, list[str]]:
    """`--min-speedup`: the most robust probe that ran at least `min_speedup` times the
    original's speed (the largest MAC ratio among them), why, and warnings."""
    fast = [p for p in probes if p.speedup is not None and p.speedup >= min_speedup]
    if not fast:
        best = max((p.speedup or 0.0 for p in probes), default=0.0)
        reason = (
            f"no candidate ran {min_speedup:g}x the original's speed (the fastest {best:.2f}x): "
            "the original ships"
        )
        return None, reason, []
    chosen = max(fast, key=lambda p: (p.mac_ratio, p.robust))
    reason = (
        f"the largest MAC ratio that ran at least {min_speedup:g}x: {chosen.mac_ratio:.3f} "
        f"({chosen.measure} alphas) ran {chosen.speedup:.2f}x and lost "
        f"{chosen.drop.points:+.2f} points of robust accuracy on the held-out images"
    )
    return chosen, reason, []


@dataclass(frozen=True)
class ExactLayer:
    """One GDWS layer of the probe taken apart: the share of the probe's logit error under
    attack (percent, on the calibration images) that putting its original conv back removes,
    and the MACs that costs."""

    name: str
    gain: float
    macs: int


def rank_exact_layers(layers: list[ExactLayer]) -> list[ExactLayer]:
    """The layers worth keeping exact, most error removed per MAC first; a layer whose
    original conv removed none is dropped (keeping it exact would buy nothing).

    Example:
        >>> ranked = rank_exact_layers([ExactLayer("a", 1.0, 100), ExactLayer("b", 1.0, 10),
        ...                             ExactLayer("c", 0.0, 1)])
        >>> [layer.name for layer in ranked]
        ['b', 'a']
    """
    useful = [layer for layer in layers if layer.gain > 0]
    return sorted(useful, key=lambda layer: -layer.gain / max(layer.macs, 1))


def logit_error(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """How far `logits` are from the `reference` logits: the mean squared difference over
    the mean squared reference logit (scale-free, 0 when equal)."""
    scale = float(reference.pow(2).mean())
    return float((logits - reference).pow(2).mean()) / scale if scale > 0 else 0.0


def bisect_ratio(
    evaluate: Callable[[float], Probe],
    go_lower: Callable[[Probe], bool],
    *,
    ratio_range: tuple[float, float] = RATIO_RANGE,
    probes: int = SEARCH_PROBES,
) -> list[Probe]:
    """Probe MAC ratios by bisection on a log scale (module docstring); returns every probe.

    Args:
        evaluate: builds and judges the model at one MAC ratio.
        go_lower: whether the next probe should cut deeper than this one: the probe is within
            the robust-accuracy budget, or (`--min-speedup`) not fast enough yet.
        ratio_range: (lowest ratio tried, highest).
        probes: how many ratios to try.
    """
    low, high = (math.log(r) for r in ratio_range)
    done = []
    for _ in range(probes):
        ratio = round(math.exp((low + high) / 2), 4)
        probe = evaluate(ratio)
        done.append(probe)
        if go_lower(probe):
            high = math.log(ratio)
        else:
            low = math.log(ratio)
    return done


__all__ = [
    "DEFAULT_MAX_ROBUST_DROP",
    "EXACT_PROBES",
    "MAX_EXACT_LAYERS",
    "ExactLayer",
    "PairedDrop",
    "Probe",
    "SearchResult",
    "bisect_ratio",
    "choose_for_speed",
    "choose_operating_point",
    "logit_error",
    "rank_exact_layers",
]
