"""The method registry: `register_method`, `get_method`, `list_methods`, `compress`.

As in timm's model registry and torchao's config-to-handler table: each method is one
`Method` subclass decorated with `register_method`, found by name (`get_method("tucker2")`,
`--method tucker2`) or by the type of its config (`compress(model, TuckerConfig(), budget)`).
A comma-separated name is a combination (`get_method("gdws,kronecker")`, `combined`).
"""

from __future__ import annotations

import difflib
from typing import TypeVar

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.methods.base import Budget, Method, MethodConfig, MethodReport

_REGISTRY: dict[str, Method] = {}
_BY_CONFIG: dict[type[MethodConfig], Method] = {}

M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: register one instance of the `Method` subclass under `cls.name`.

    Example:
        >>> @register_method
        ... class Halve(Method):
        ...     name, title, config_type = "halve", "halving", HalveConfig   # doctest: +SKIP
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or "," in name:
        raise InvalidInputError(f"register_method: {cls.__name__} needs a name without commas")
    if name in _REGISTRY:
        raise InvalidInputError(f"register_method: method {name!r} is already registered")
    if cls.config_type in _BY_CONFIG:
        raise InvalidInputError(
            f"register_method: {cls.config_type.__name__} already configures "
            f"{_BY_CONFIG[cls.config_type].name!r}; give {name!r} its own config type"
        )
    method = cls()
    _REGISTRY[name] = method
    _BY_CONFIG[cls.config_type] = method
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method `name`, or the combination "a,b" (`combined`).

    Raises:
        InvalidInputError: an unknown name (one line, with the closest known name and all of
            them), or a combination of methods replacing the same module type.

    Example:
        >>> get_method("tucker2").replaces
        (<class 'torch.nn.modules.conv.Conv2d'>,)
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"--method takes a method name, got {name!r}")
    names = [part.strip() for part in name.split(",")]
    methods = [_lookup(part) for part in names]
    if len(methods) == 1:
        return methods[0]
    from gdws_export.methods.combined import combined

    return combined(methods)


def _lookup(name: str) -> Method:
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise InvalidInputError(
        f"--method {name!r} is unknown; {hint}known methods: {', '.join(list_methods())} "
        "(combine them with commas, e.g. gdws,kronecker)"
    )


def method_for(config: MethodConfig) -> Method:
    """The method `config` configures (torchao's table from config type to handler)."""
    method = _BY_CONFIG.get(type(config))
    if method is None:
        raise InvalidInputError(
            f"{type(config).__name__} configures no registered method; register its Method "
            "with @register_method"
        )
    return method


def compress(
    model: nn.Module, config: MethodConfig | str, budget: Budget | None = None, **inputs
) -> tuple[nn.Module, MethodReport]:
    """Compress `model` with the method its `config` (or name) picks; `model` is kept.

    Args:
        model: any `nn.Module`.
        config: a method's config (`Tucker2Config(solver="greedy")`) or a method name.
        budget: how much to keep (`Budget(mac_ratio=0.5)`); None: the method's default.
        **inputs: `Method.apply`'s keywords (alphas, exclude, input_shape, input_moments,
            layer_costs).

    Example:
        >>> small, report = compress(model, "gdws,kronecker", Budget(mac_ratio=0.5))
        ... # doctest: +SKIP
        >>> print(report.table())                                              # doctest: +SKIP
    """
    if isinstance(config, str):
        return get_method(config).apply(model, budget, **inputs)
    return method_for(config).apply(model, budget, config, **inputs)
