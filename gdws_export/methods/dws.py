"""`dws`: plain depthwise-separable convs, one SVD kernel per input channel
(`baselines.depthwise_separable`); the smallest method, the example of docs/methods.md."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gdws_export.baselines.separable import depthwise_separable
from gdws_export.gdws.approximation_report import ApproximationReport
from gdws_export.methods.base import Budget, Method, MethodConfig, MethodInputs, check_reached
from gdws_export.methods.registry import register_method


@dataclass(frozen=True)
class DWSConfig(MethodConfig):
    """`skip_first` keeps the first conv exact (it sees the raw image and is cheap)."""

    skip_first: bool = True


@register_method
class DWSMethod(Method):
    """`mac_ratio` picks which convs to convert, least weighted error per MAC saved first;
    a ratio below converting them all is out of reach."""

    name = "dws"
    title = "depthwise-separable"
    config_type = DWSConfig
    uses_alphas = True  # ranks the layers with the same alphas as GDWS
    uses_input_moments = True
    makes_gdws = True  # GDWS convs with one kernel per channel: refit and lowering apply

    def replace(
        self, model: nn.Module, config: DWSConfig, budget: Budget, inputs: MethodInputs
    ) -> tuple[nn.Module, ApproximationReport]:
        new_model, report = depthwise_separable(
            model, mac_ratio=budget.mac_ratio, alphas=inputs.alphas,
            input_moments=inputs.input_moments, skip_first=config.skip_first,
            exclude=inputs.exclude or None, input_shape=inputs.input_shape,
        )  # fmt: skip
        check_reached(
            self.name, budget.mac_ratio, report.achieved_mac_ratio, "every conv converted"
        )
        return new_model, report
