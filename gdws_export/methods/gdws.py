"""`gdws`: Generalized Depthwise-Separable convs (`gdws_export.gdws.approximate`), the
default method; the only one taking `beta` and `time_ratio`, and the one `--lowering`, the
1x1 refit and `auto` lowering were made for."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.approximate import ApproximationReport, approximate
from gdws_export.methods.base import Budget, Method, MethodConfig, MethodInputs
from gdws_export.methods.registry import register_method


@dataclass(frozen=True)
class GDWSMethodConfig(MethodConfig):
    """GDWS's options beyond the budget: `align` rounds each layer's kernel count to a
    multiple of it, `skip_first` keeps the first conv exact (`GDWSConfig`)."""

    align: int = 1
    skip_first: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.align, bool) or not isinstance(self.align, int) or self.align < 1:
            raise InvalidInputError(f"align must be a positive integer, got {self.align!r}")


@register_method
class GDWSMethod(Method):
    """Each KxK conv becomes a GDWS conv (per-channel SVD kernels and a 1x1 conv), the kernels
    spread over the network by `beta`, `mac_ratio` or `time_ratio` (`approximate`)."""

    name = "gdws"
    title = "GDWS"
    config_type = GDWSMethodConfig
    budgets = ("mac_ratio", "beta", "time_ratio")
    uses_alphas = True
    uses_input_moments = True
    makes_gdws = True

    def replace(
        self, model: nn.Module, config: GDWSMethodConfig, budget: Budget, inputs: MethodInputs
    ) -> tuple[nn.Module, ApproximationReport]:
        return approximate(
            model, beta=budget.beta, mac_ratio=budget.mac_ratio, time_ratio=budget.time_ratio,
            layer_costs=inputs.layer_costs, alphas=inputs.alphas,
            input_moments=inputs.input_moments, input_shape=inputs.input_shape,
            max_layer_error=budget.max_layer_error, exclude=inputs.exclude or None,
            align=config.align, skip_first=config.skip_first,
        )  # fmt: skip
