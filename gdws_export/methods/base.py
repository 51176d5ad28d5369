"""The one interface every compression method implements: `Method`, with its `Budget`,
its inputs (`MethodInputs`), its config base (`MethodConfig`) and its report (`MethodReport`).

A method is a small frozen config dataclass, validated once in `__post_init__`, and a
`Method` subclass whose `replace` (the handler) swaps modules of the types it declares in
`replaces` and returns a per-layer report built on `PerLayerReport` / `ConvLayerReport`
(name, status, MACs and parameters before and after, error). Everything it produces is made
of modules that export to plain ONNX ops (convs, MatMuls, GDWS convs with their lowering).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from gdws_export._options import Options
from gdws_export.errors import (
    BudgetOutOfReachError,
    InvalidInputError,
    UnsupportedModelError,
    shown,
)
from gdws_export.gdws.approximation_report import ConvLayerReport, PerLayerReport

BUDGET_KINDS = ("mac_ratio", "beta", "time_ratio")
_SHOWN = 4  # layer names a message lists
# Statuses of a layer a method left as it was (every other status means it was replaced).
UNCHANGED = ("skipped", "original")


@dataclass(frozen=True)
class Budget:
    """How much a method may keep: one of `mac_ratio` (the fraction of the replaceable
    layers' MACs, or of what the method's docstring says it prices), `beta` (GDWS's per-layer
    error bound) and `time_ratio` (GDWS's measured time); `max_layer_error` caps a layer's
    share of the error under a GDWS budget. None everywhere: the method's default.

    Example:
        >>> Budget(mac_ratio=0.5).kind
        'mac_ratio'
    """

    mac_ratio: float | None = None
    beta: float | None = None
    time_ratio: float | None = None
    max_layer_error: float | None = None

    @property
    def kind(self) -> str | None:
        """The budget given ("mac_ratio", "beta", "time_ratio"), None for none."""
        given = [k for k in BUDGET_KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise InvalidInputError(f"give one budget, not {' and '.join(given)}")
        return given[0] if given else None


@dataclass(frozen=True)
class MethodInputs:
    """What a handler may use besides the model, config and budget: per-layer alphas and
    input moments (by module name), measured layer costs (`time_ratio`), module names or
    patterns to keep exact, and the (C, H, W) input shape."""

    alphas: Mapping[str, torch.Tensor] | None = None
    input_moments: Mapping[str, torch.Tensor] | None = None
    layer_costs: Mapping[str, Any] | None = None
    exclude: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MethodConfig(Options):
    """Base of the methods' configs: frozen dataclasses checked once, on creation, so a
    config that exists is valid. Fields with a bool default must be True or False; a
    subclass checks its other fields in `__post_init__` (calling this one)."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(item.default, bool) and not isinstance(value, bool):
                raise InvalidInputError(f"{item.name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class Site:
    """One module a method may replace: its dotted name, the module, and why it is left
    alone (None: replaceable)."""

    name: str
    module: nn.Module
    skip_reason: str | None = None


@dataclass
class MethodReport(PerLayerReport):
    """What one method (or a combination) did: its name, every layer it considered (each a
    `ConvLayerReport`: name, status, MACs and parameters before and after, error), and its
    handler's own report (`details`), or each part's for a combination (`parts`).

    `to_dict()` is the handler report's JSON with "method" added, so the default GDWS
    report keeps every field it had.
    """

    method: str
    layers: list[ConvLayerReport]
    details: PerLayerReport | None = None
    parts: dict[str, MethodReport] = field(default_factory=dict)

    @property
    def replaced(self) -> list[ConvLayerReport]:
        """The layers replaced by another module."""
        return [layer for layer in self.layers if layer.status not in UNCHANGED]

    @property
    def params_before(self) -> int:
        """Parameters of the layers the method was allowed to replace, before."""
        return self.allowed_total("params_before")

    @property
    def params_after(self) -> int:
        return self.allowed_total("params_after")

    def to_dict(self) -> dict:
        if self.details is not None:
            return {**self.details.to_dict(), "method": self.method}
        return {
            "method": self.method,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "parts": {name: part.to_dict() for name, part in self.parts.items()},
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "achieved_mac_ratio": self.achieved_mac_ratio,
        }

    def table(self) -> str:
        if self.details is not None:
            return self.details.table()
        return "\n\n".join(f"{name}:\n\n{part.table()}" for name, part in self.parts.items())


class Method:
    """A compression method: subclass it, set the class attributes, write `replace`, and
    decorate the class with `register_method` (docs/methods.md).

    Attributes:
        name: the registered name (`--method NAME`).
        title: how messages name it ("GDWS").
        config_type: its `MethodConfig` subclass.
        replaces: the module types it replaces; two methods combined must not share one.
        budgets: the budget kinds it takes (`Budget`); "mac_ratio" is what the search bisects.
        uses_alphas, uses_input_moments: whether sensitivities (per-layer alphas, keyed by
            conv name) and activation-aware input moments change what it builds.
        makes_gdws: whether it produces `GDWSConv2d` layers (the 1x1 refit and the lowering
            forms act on those only; every other module exports as it is).
        layers_independent: whether each replaced layer can be put back alone (the search
            then tries keeping some exact); False where replacing one layer changes others.
        layer_kind, layer_noun, absent: how messages name what it replaces.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    config_type: ClassVar[type[MethodConfig]] = MethodConfig
    replaces: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)
    budgets: ClassVar[tuple[str, ...]] = ("mac_ratio",)
    uses_alphas: ClassVar[bool] = False
    uses_input_moments: ClassVar[bool] = False
    makes_gdws: ClassVar[bool] = False
    layers_independent: ClassVar[bool] = True
    layer_kind: ClassVar[str] = "KxK conv"
    layer_noun: ClassVar[str] = "conv"
    absent: ClassVar[str] = "no nn.Conv2d at all"

    def apply(
        self,
        model: nn.Module,
        budget: Budget | None = None,
        config: MethodConfig | None = None,
        *,
        alphas: Mapping[str, torch.Tensor] | None = None,
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        input_moments: Mapping[str, torch.Tensor] | None = None,
        layer_costs: Mapping[str, Any] | None = None,
    ) -> tuple[nn.Module, MethodReport]:
        """Replace the modules of `model` this method replaces; `model` is left untouched.

        Args:
            model: any `nn.Module`.
            budget: how much to keep (`Budget`); None: the method's default.
            config: the method's options (`config_type`); None: its defaults.
            alphas, input_moments: per-layer sensitivities and input moments by conv name,
                used by the methods that say so (`uses_alphas`, `uses_input_moments`).
            exclude: module names or shell-style patterns kept exact.
            input_shape: (C, H, W) of one input; defaults to `model.input_shape`.
            layer_costs: measured layer costs, for GDWS's `time_ratio`.

        Returns:
            (new model, `MethodReport`).

        Example:
            >>> small, report = get_method("tucker2").apply(model, Budget(mac_ratio=0.5))
            ... # doctest: +SKIP
        """
        budget = Budget() if budget is None else budget
        self.check_budget(budget)
        config = self.config_type.resolve(config)
        inputs = MethodInputs(alphas, input_moments, layer_costs, tuple(exclude or ()),
                              None if input_shape is None else tuple(input_shape))  # fmt: skip
        new_model, details = self.replace(model, config, budget, inputs)
        return new_model, MethodReport(self.name, list(details.layers), details)

    def replace(
        self, model: nn.Module, config: MethodConfig, budget: Budget, inputs: MethodInputs
    ) -> tuple[nn.Module, PerLayerReport]:
        """The handler: a copy of `model` with the replaceable modules replaced, and the
        per-layer report (layers with status, MACs, parameters and error)."""
        raise NotImplementedError

    def check_budget(self, budget: Budget) -> None:
        """Refuse a budget kind this method does not take, in one line."""
        kind = budget.kind
        if kind is not None and kind not in self.budgets:
            options = " or ".join("--" + b.replace("_", "-") for b in self.budgets)
            raise InvalidInputError(
                f"--method {self.name} takes {options}, not --{kind.replace('_', '-')}"
            )
        if budget.max_layer_error is not None and "time_ratio" not in self.budgets:
            raise InvalidInputError(
                f"--max-layer-error caps GDWS's budget; --method {self.name} has no such cap"
            )

    def find_sites(self, model: nn.Module, exclude: Sequence[str] = ()) -> list[Site]:
        """Every module of `replaces`' types, in module order, each marked replaceable or
        not; an `exclude` pattern matching none is an error. Conv methods: `find_convs`."""
        from gdws_export.gdws.selection import find_convs

        return [Site(s.name, s.conv, s.skip_reason)
                for s in find_convs(model, exclude=list(exclude) or None)]  # fmt: skip

    def none_replaceable(self, sites: list[Site]) -> str:
        """Why no site is replaceable when none was excluded (a report line's middle)."""
        return f"every {self.layer_kind} is depthwise (or 1x1)"

    def first_conv_note(self, sites: list[Site]) -> str:
        """What the report adds when the first conv is a KxK conv the method could replace
        but never does (`skip_first`)."""
        from gdws_export.gdws.conv import is_depthwise

        first = sites[0].module
        if isinstance(first, nn.Conv2d) and first.kernel_size != (1, 1) and not is_depthwise(first):
            return f" (the first conv, {sites[0].name}, is always kept exact)"
        return ""

    def no_replacement_reason(
        self, model: nn.Module, model_file: str, exclude: Sequence[str] = ()
    ) -> str | None:
        """Why this method can replace nothing in `model` ("no replaceable conv: ..., so the
        original ships"), or None when it can replace something.

        A model whose KxK convs are all depthwise (or that has only 1x1 convs) is already as
        small as a conv method would make it: the export ships the original, it does not fail.

        Raises:
            UnsupportedModelError: the model has no module of the types it replaces.
            InvalidInputError: an `exclude` pattern names no such module.
        """
        sites = self.find_sites(model, exclude)
        if not sites:
            raise UnsupportedModelError(
                f"{model_file} has no {self.layer_kind} that {self.title} can replace "
                f"({self.absent}); use --no-gdws to export it as it is"
            )
        if any(site.skip_reason is None for site in sites):
            return None
        excluded = [site.name for site in sites if site.skip_reason == "matched by exclude"]
        if excluded:
            why = f"--exclude leaves none ({shown(excluded, _SHOWN)} excluded)"
        else:
            why = self.none_replaceable(sites)
        reason = f"no replaceable {self.layer_noun}: {why}, so the original ships"
        return reason + self.first_conv_note(sites)


def check_patterns(patterns: Sequence[str], names: Sequence[str], what: str) -> None:
    """Every pattern must match one of `names` (a typo otherwise); `what` names them."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise InvalidInputError(
                f"exclude pattern {pattern!r} matches no {what} ({what}s: "
                f"{shown(list(names), 8) or 'none'})"
            )


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` matches one of the shell-style `patterns`."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_reached(method: str, requested: float | None, achieved: float, cheapest: str) -> None:
    """Refuse a MAC ratio the method could not meet: `achieved` is what its cheapest choice
    (`cheapest`, in words) keeps.

    Raises:
        BudgetOutOfReachError: with `reachable` set to `achieved`.
    """
    if requested is not None and achieved > requested * (1 + 1e-9):
        raise BudgetOutOfReachError(
            f"--method {method}: mac_ratio {requested:g} is out of reach: {cheapest} keeps "
            f"{achieved:.4f} of the MACs; pass a larger --mac-ratio",
            reachable=achieved,
        )
