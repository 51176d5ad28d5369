"""`GDWSConfig`: how much `approximate` approximates, and which convs it may replace."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.gdws.decomposition import check_beta

# The default max_layer_error of time budgets (see `approximate`); MAC budgets default to none.
TIME_MAX_LAYER_ERROR = 0.35


@dataclass(frozen=True)
class GDWSConfig:
    """The settings of one `approximate` run, validated.

    Attributes:
        beta: per-layer weighted error bound (LEGO on every layer). Exactly one of `beta`,
            `mac_ratio` and `time_ratio`.
        mac_ratio: in (0, 1]: the approximable convs keep at most this fraction of their MACs
            (a global kernel budget, see `budget`). Needs the input shape.
        time_ratio: in (0, 1]: the same budget priced by measured layer costs (`LayerCost`).
        max_layer_error: in (0, 1]: with `mac_ratio` or `time_ratio`, no layer keeps more
            than this share of its weighted error (see `approximate`'s module docstring; soft
            where the budget cannot be met otherwise). None: `TIME_MAX_LAYER_ERROR` (0.35) for
            a time budget, no cap for a MAC budget; 1 turns the cap off.
        align: the lowering pads each GDWS layer's kernel count to a multiple of `align`
            with zero kernels (ONNX Runtime's blocked layout needs 8 or 16, see
            `gdws_export.lowering`); real kernels can fill that room at no cost in time.
            Budgets price G kernels as G rounded up to such a multiple (a grouped conv: its
            per-group count, as the lowering pads it), so they buy whole blocks; with `beta`,
            a plain conv's next-best kernels fill its last block. 1: every kernel priced alone.
        skip_first, include, exclude: which convs may be replaced (see `find_convs`).

    Example:
        >>> GDWSConfig(time_ratio=0.5).resolved_max_layer_error
        0.35
    """

    beta: float | None = None
    mac_ratio: float | None = None
    time_ratio: float | None = None
    max_layer_error: float | None = None
    align: int = 1
    skip_first: bool = True
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None

    def __post_init__(self) -> None:
        targets = (self.beta, self.mac_ratio, self.time_ratio)
        if sum(x is not None for x in targets) != 1:
            raise InvalidInputError(
                "give exactly one of beta (error bound), mac_ratio (MAC budget) "
                "or time_ratio (time budget)"
            )
        if self.beta is not None:
            object.__setattr__(self, "beta", check_beta(self.beta))
        for name in ("mac_ratio", "time_ratio", "max_layer_error"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_budget_ratio(getattr(self, name), name))
        if self.max_layer_error is not None and self.beta is not None:
            raise InvalidInputError("max_layer_error applies to mac_ratio and time_ratio, not beta")
        if isinstance(self.align, bool) or not isinstance(self.align, int) or self.align < 1:
            raise InvalidInputError(f"align must be a positive int, got {self.align!r}")

    @classmethod
    def resolve(cls, config: GDWSConfig | None = None, **overrides: Any) -> GDWSConfig:
        """`config` with `overrides` applied (`config` None: the overrides alone).

        Example:
            >>> GDWSConfig.resolve(None, mac_ratio=0.5).mac_ratio
            0.5
        """
        if config is None:
            return cls(**overrides)  # an unknown name is a TypeError, as for any keyword
        if not isinstance(config, cls):
            raise InvalidInputError(f"config must be a GDWSConfig, got {type(config).__name__}")
        return dataclasses.replace(config, **overrides)

    @property
    def budget_ratio(self) -> float | None:
        """The budget fraction, MACs or time; None with `beta`."""
        return self.mac_ratio if self.mac_ratio is not None else self.time_ratio

    @property
    def resolved_max_layer_error(self) -> float | None:
        """`max_layer_error`, or its default: `TIME_MAX_LAYER_ERROR` under a time budget."""
        if self.max_layer_error is None and self.time_ratio is not None:
            return TIME_MAX_LAYER_ERROR
        return self.max_layer_error
