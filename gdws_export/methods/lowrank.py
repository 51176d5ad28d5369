"""`tucker2` and `lowrank`: KxK convs as Tucker-2 (1x1 -> KxK core -> 1x1) or two-factor
(KxK -> 1x1) convs, ranks chosen across the network under one MAC budget
(`lowrank.approximate_lowrank`); plain convs, so they export as they are."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.lowrank.allocation import SOLVERS
from gdws_export.lowrank.approximate import approximate_lowrank
from gdws_export.lowrank.report import LowRankReport
from gdws_export.methods.base import Budget, Method, MethodConfig, MethodInputs
from gdws_export.methods.registry import register_method


@dataclass(frozen=True)
class _RankConfig(MethodConfig):
    """`solver`: the rank allocator, "auto" (exact, greedy past a size), "exact" or "greedy"
    (`lowrank.allocation.allocate`); `skip_first` keeps the first conv exact."""

    solver: str = "auto"
    skip_first: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver not in SOLVERS:
            raise InvalidInputError(
                f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
            )


@dataclass(frozen=True)
class Tucker2Config(_RankConfig):
    """Options of `tucker2`."""


@dataclass(frozen=True)
class LowRankConfig(_RankConfig):
    """Options of `lowrank`."""


class _RankMethod(Method):
    """A form of `approximate_lowrank` ("tucker2" or "lowrank") as a method."""

    form = ""
    uses_alphas = True  # per-layer scales or per-channel alphas weigh each conv's error

    def replace(
        self, model: nn.Module, config: _RankConfig, budget: Budget, inputs: MethodInputs
    ) -> tuple[nn.Module, LowRankReport]:
        return approximate_lowrank(
            model, mac_ratio=budget.mac_ratio, method=self.form, alphas=inputs.alphas,
            skip_first=config.skip_first, exclude=inputs.exclude or None,
            input_shape=inputs.input_shape, solver=config.solver,
        )  # fmt: skip


@register_method
class Tucker2Method(_RankMethod):
    """Tucker-2 convs (HOSVD), ranks (r_out, r_in) per conv under the MAC budget."""

    name = "tucker2"
    title = "Tucker-2"
    config_type = Tucker2Config
    form = "tucker2"


@register_method
class LowRankMethod(_RankMethod):
    """Two-factor convs (truncated SVD of the M x C*Kh*Kw weight), a rank per conv."""

    name = "lowrank"
    title = "two-factor low rank"
    config_type = LowRankConfig
    form = "lowrank"
