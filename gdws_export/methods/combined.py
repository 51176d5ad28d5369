"""Combinations: `--method gdws,kronecker` applies each method to the module types it
replaces (GDWS to the convs, Kronecker to the Linear layers), one after the other.

Two methods replacing the same module type cannot be combined (which one would get a conv?).
One budget goes to every part, each reading it as its docstring says (`--mac-ratio 0.5`: the
convs keep half their MACs, the Linear layers half their parameters). `--exclude` patterns
go to the parts whose module types they name; one naming none of them is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.methods.base import (
    Budget,
    Method,
    MethodConfig,
    MethodInputs,
    MethodReport,
    Site,
    matches,
)


class CombinedMethod(Method):
    """Several methods over disjoint module types, applied in the order given."""

    config_type = MethodConfig

    def __init__(self, parts: Sequence[Method]) -> None:
        self.parts = tuple(parts)
        self.name = ",".join(p.name for p in self.parts)
        self.title = " + ".join(p.title for p in self.parts)
        self.replaces = tuple(t for p in self.parts for t in p.replaces)
        self.budgets = tuple(b for b in self.parts[0].budgets
                             if all(b in p.budgets for p in self.parts))  # fmt: skip
        self.uses_alphas = any(p.uses_alphas for p in self.parts)
        self.uses_input_moments = any(p.uses_input_moments for p in self.parts)
        self.makes_gdws = any(p.makes_gdws for p in self.parts)
        self.layers_independent = all(p.layers_independent for p in self.parts)
        self.layer_kind = " or ".join(p.layer_kind for p in self.parts)
        self.layer_noun = "layer"
        self.absent = "; ".join(p.absent for p in self.parts)

    def apply(self, model, budget=None, config=None, **inputs) -> tuple[nn.Module, MethodReport]:
        """Each part's `apply` on the previous part's output (`Method.apply`); `config` must
        be None (each part takes its defaults: use the parts' own configs to set them)."""
        if config is not None:
            raise InvalidInputError(
                f"--method {self.name} takes each part's default config; apply the parts one "
                "by one to configure them"
            )
        budget = Budget() if budget is None else budget
        self.check_budget(budget)
        exclude = self._split_exclude(model, tuple(inputs.pop("exclude", ()) or ()))
        reports: dict[str, MethodReport] = {}
        for part in self.parts:
            given = dict(inputs)
            if not part.uses_alphas:
                given.pop("alphas", None)
            if not part.uses_input_moments:
                given.pop("input_moments", None)
            model, reports[part.name] = part.apply(model, budget, exclude=exclude[part.name],
                                                   **given)  # fmt: skip
        layers = [layer for report in reports.values() for layer in report.layers]
        return model, MethodReport(self.name, layers, parts=reports)

    def replace(self, model, config, budget: Budget, inputs: MethodInputs):
        raise NotImplementedError("a combination applies its parts (apply)")

    def _split_exclude(self, model: nn.Module, patterns: tuple[str, ...]) -> dict[str, tuple]:
        """Each part's share of the `--exclude` patterns: those naming a module it may
        replace. A pattern naming none of any part's modules is a typo: refused."""
        names = {p.name: [n for n, m in model.named_modules() if isinstance(m, p.replaces)]
                 for p in self.parts}  # fmt: skip
        split: dict[str, tuple] = {p.name: () for p in self.parts}
        for pattern in patterns:
            owners = [p for p in self.parts if any(matches(n, [pattern]) for n in names[p.name])]
            if not owners:
                kinds = ", ".join(t.__name__ for t in self.replaces)
                raise InvalidInputError(
                    f"exclude pattern {pattern!r} matches no layer --method {self.name} "
                    f"replaces ({kinds})"
                )
            for part in owners:
                split[part.name] = (*split[part.name], pattern)
        return split

    def find_sites(self, model: nn.Module, exclude: Sequence[str] = ()) -> list[Site]:
        split = self._split_exclude(model, tuple(exclude))
        return [site for p in self.parts for site in p.find_sites(model, split[p.name])]

    def none_replaceable(self, sites: list[Site]) -> str:
        return f"no {self.layer_kind} is replaceable ({sites[0].name}: {sites[0].skip_reason})"


def combined(methods: Sequence[Method]) -> CombinedMethod:
    """The combination of `methods`, which must replace disjoint module types.

    Raises:
        InvalidInputError: a method named twice, or two replacing the same module type.
    """
    names = ",".join(m.name for m in methods)
    twice = sorted({m.name for m in methods if methods.count(m) > 1})
    if twice:
        raise InvalidInputError(f"--method {names}: {twice[0]} is named twice")
    seen: dict[type, str] = {}
    for method in methods:
        for kind in method.replaces:
            other = seen.setdefault(kind, method.name)
            if other != method.name:
                raise InvalidInputError(
                    f"--method {names}: {other} and {method.name} both replace "
                    f"{kind.__name__} layers; combine methods that replace different layer types"
                )
    return CombinedMethod(methods)
