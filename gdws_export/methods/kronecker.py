"""`kronecker`: Linear layers as short sums of Kronecker products (`KroneckerLinear`).

The budget: a MAC budget on convs says nothing about Linear layers, so for this method
`mac_ratio` is the fraction of the replaceable Linear layers' parameters (weights and biases)
kept. Each Linear's factor shapes come from its dimensions (`kronecker_shape`, both split
near their square roots); its options are the original layer and every rank 1..R, each
costing R*(m1*n1 + m2*n2) + m parameters with squared error sum(s[R:]^2) / ||W||^2 (the
fraction of the weight's energy dropped, so layers of different scales compare); ranks whose
two matrix products would cost as many MACs as the layer's one are not offered (fewer
parameters, but slower). The ranks
of all Linear layers are chosen together: least total error within the budget
(`lowrank.allocation.allocate`). Alphas (per conv) do not apply. The report's MACs are the
Linear layers' matrix products per image, before and after.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gdws_export.errors import BudgetOutOfReachError, InvalidInputError
from gdws_export.gdws.approximate import NOT_RUN
from gdws_export.gdws.approximation_report import ConvLayerReport, PerLayerReport
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.gdws.selection import record_forward, replace_module, resolve_input_shape
from gdws_export.lowrank.allocation import SOLVERS, allocate
from gdws_export.lowrank.kronecker import (
    KroneckerLinear,
    kronecker_factors,
    kronecker_macs,
    kronecker_shape,
)
from gdws_export.methods.base import (
    Budget,
    Method,
    MethodConfig,
    MethodInputs,
    Site,
    check_patterns,
    matches,
)
from gdws_export.methods.registry import register_method


@dataclass(frozen=True)
class KroneckerConfig(MethodConfig):
    """`solver`: the rank allocator ("auto", "exact" or "greedy", as for `tucker2`)."""

    solver: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver not in SOLVERS:
            raise InvalidInputError(
                f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
            )


@dataclass
class KroneckerLayerReport(ConvLayerReport):
    """What `kronecker` did to one Linear: `in_channels`/`out_channels` are its features
    (kernel 1x1), `factor_shape` (m1, m2, n1, n2), `rank` of `max_rank` (exact), `rows`
    matrix rows per image; `weighted_error` = `relative_error` = ||W - W_hat||^2 / ||W||^2."""

    factor_shape: list[int] | None = None
    rank: int = 0
    max_rank: int = 0
    rows: int = 0
    relative_error: float = 0.0

    @property
    def shape_text(self) -> str:
        return f"{self.out_channels}x{self.in_channels}"


@dataclass
class KroneckerReport(PerLayerReport):
    """Per-Linear report of `kronecker`; `param_ratio` is the budget (the `mac_ratio` given:
    the Linear layers' parameters kept), `achieved_param_ratio` what the ranks keep."""

    param_ratio: float
    input_shape: tuple[int, ...]
    layers: list[KroneckerLayerReport]
    solver: str | None = None

    @property
    def achieved_param_ratio(self) -> float:
        kept = [layer for layer in self.layers if layer.status != "skipped"]
        before = sum(layer.params_before for layer in kept)
        return sum(layer.params_after for layer in kept) / before if before else 1.0

    def to_dict(self) -> dict:
        return {**super().to_dict(), "achieved_param_ratio": self.achieved_param_ratio}

    def table(self) -> str:
        """A Markdown table, one row per Linear layer."""
        rows = [
            "| layer | shape | status | rank | params before | params after | MACs before "
            "| MACs after | relative error |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            rank = f"{layer.rank}/{layer.max_rank}" if layer.rank else ""
            status = layer.status + (f" ({layer.reason})" if layer.reason else "")
            rows.append(
                f"| {layer.name} | {layer.shape_text} | {status} | {rank} "
                f"| {layer.params_before:,} | {layer.params_after:,} | {layer.macs_before:,} "
                f"| {layer.macs_after:,} | {layer.relative_error:.4g} |"
            )
        rows.append(
            f"| total (Linear layers) | | | | | | {self.macs_before:,} | {self.macs_after:,} "
            f"| param ratio {self.achieved_param_ratio:.3f} |"
        )
        return "\n".join(rows)


@register_method
class KroneckerMethod(Method):
    """Every Linear layer as a sum of Kronecker products, ranks under a parameter budget
    (module docstring)."""

    name = "kronecker"
    title = "Kronecker"
    config_type = KroneckerConfig
    replaces = (nn.Linear,)
    layer_kind = "Linear layer"
    layer_noun = "Linear layer"
    absent = "no nn.Linear at all"

    def find_sites(self, model: nn.Module, exclude: Sequence[str] = ()) -> list[Site]:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        check_patterns(exclude, [n for n, _ in linears], "Linear layer")
        return [Site(n, m, "matched by exclude" if matches(n, exclude) else None)
                for n, m in linears]  # fmt: skip

    def none_replaceable(self, sites: list[Site]) -> str:
        return f"{sites[0].name}: {sites[0].skip_reason}"

    def replace(
        self, model: nn.Module, config: KroneckerConfig, budget: Budget, inputs: MethodInputs
    ) -> tuple[nn.Module, KroneckerReport]:
        meaning = "the fraction of the Linear layers' parameters to keep"
        ratio = check_budget_ratio(budget.mac_ratio, "mac_ratio", meaning)
        shape = resolve_input_shape(model, inputs.input_shape, needed_by="kronecker")
        sites = self.find_sites(model, inputs.exclude)
        rows = _rows_per_image(model, [s.name for s in sites], shape)
        reports = {s.name: _layer_report(s, rows.get(s.name, 0)) for s in sites}
        for site in sites:
            if site.skip_reason is None and site.name not in rows:
                reports[site.name].status, reports[site.name].reason = "skipped", NOT_RUN
        candidates = [s for s in sites if reports[s.name].status != "skipped"]
        new_model, solver = copy.deepcopy(model), None
        if candidates:
            options = {s.name: _options(s.module) for s in candidates}
            choice, solver = _allocate(options, ratio, config.solver)
            for site in candidates:
                _replace(new_model, site, options[site.name], choice[site.name],
                         reports[site.name])  # fmt: skip
        return new_model, KroneckerReport(ratio, shape, list(reports.values()), solver)


@dataclass
class _Options:
    """One Linear's options: index 0 the layer itself, k >= 1 rank `ranks[k - 1]`; costs in
    parameters, errors relative to the weight's energy."""

    factor_shape: tuple[int, int, int, int]
    ranks: list[int]
    max_rank: int
    cost: torch.Tensor
    error: torch.Tensor


def _options(linear: nn.Linear) -> _Options:
    """The layer and every rank whose matrix products cost fewer MACs than the layer's (a
    higher rank can cut parameters yet cost more MACs, which would only slow it down)."""
    m, n = linear.out_features, linear.in_features
    shape = kronecker_shape(m, n)
    _, _, s = kronecker_factors(linear.weight, shape)
    energy = float(s.pow(2).sum())
    dropped = s.pow(2).flip(0).cumsum(0).flip(0)  # dropped[i] = sum(s[i:]^2)
    tail = torch.cat([dropped[1:], torch.zeros(1, dtype=s.dtype)])  # after keeping 1..R terms
    bias = m if linear.bias is not None else 0
    m1, m2, n1, n2 = shape
    ranks = [r for r in range(1, len(s) + 1) if kronecker_macs(shape, r) < m * n]
    index = torch.tensor([r - 1 for r in ranks], dtype=torch.long)
    cost = [float(m * n + bias)] + [float(r * (m1 * n1 + m2 * n2) + bias) for r in ranks]
    kept_error = tail[index] / energy if energy > 0 else torch.zeros(len(ranks))
    error = torch.cat([torch.zeros(1, dtype=torch.float64), kept_error])
    return _Options(shape, ranks, len(s), torch.tensor(cost, dtype=torch.float64), error.double())


def _allocate(options: Mapping[str, _Options], ratio: float, solver: str):
    """{layer: option index (0: the original)} within `ratio` of the Linear layers'
    parameters, and the solver that chose them."""
    total = sum(float(o.cost[0]) for o in options.values())
    cheapest = sum(float(o.cost.min()) for o in options.values())
    if cheapest > ratio * total * (1 + 1e-12):
        raise BudgetOutOfReachError(
            f"--method kronecker: mac_ratio {ratio:g} (the fraction of the Linear layers' "
            f"parameters kept) is out of reach: the cheapest rank of every layer keeps "
            f"{cheapest / total:.4f} of them; pass a larger --mac-ratio",
            reachable=cheapest / total,
        )
    found = allocate([o.cost for o in options.values()], [o.error for o in options.values()],
                     ratio * total, solver=solver)  # fmt: skip
    return dict(zip(options, found.choice, strict=True)), found.solver


def _replace(model, site: Site, opt: _Options, choice: int, report: KroneckerLayerReport) -> None:
    report.factor_shape, report.max_rank = list(opt.factor_shape), opt.max_rank
    if choice == 0:
        report.status, report.reason = "original", "the budget pays for the original layer"
        if not opt.ranks:
            report.reason = "every rank costs as many MACs as the layer"
        return
    rank = opt.ranks[choice - 1]
    module = KroneckerLinear.from_linear(site.module, rank, opt.factor_shape)
    report.status, report.rank = "kronecker", rank
    report.macs_after = report.rows * kronecker_macs(opt.factor_shape, rank)
    report.params_after = module.params
    report.weighted_error = report.relative_error = float(opt.error[choice])
    replace_module(model, site.name, module)


def _layer_report(site: Site, rows: int) -> KroneckerLayerReport:
    linear = site.module
    params = sum(p.numel() for p in linear.parameters())
    macs = rows * linear.in_features * linear.out_features
    return KroneckerLayerReport(
        name=site.name, in_channels=linear.in_features, out_channels=linear.out_features,
        kernel_size=(1, 1), groups=1, status="skipped" if site.skip_reason else "original",
        reason=site.skip_reason or "", macs_before=macs, macs_after=macs,
        params_before=params, params_after=params, rows=rows,
    )  # fmt: skip


def _rows_per_image(model: nn.Module, names: Sequence[str], shape) -> dict[str, int]:
    """Matrix rows each named Linear multiplies for one image (1 after a flatten); layers the
    forward does not reach are left out."""
    return record_forward(
        model, names, tuple(shape),
        lambda module, inputs, _out: math.prod(inputs[0].shape) // module.in_features,
    )  # fmt: skip
