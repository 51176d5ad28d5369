"""The architecture registry: `register_model`, `create_model`, `list_models`, `load_model`.

As in timm, each architecture is one builder function decorated with `register_model`, which
records it with its `ModelConfig`. A builder takes the resolved standard arguments as one
`ModelArgs` (its first parameter, named `args`) or, the older form, as the keyword arguments
in `STANDARD_ARGS`; plus any extras of its own that have defaults. `create_model` resolves the
defaults, validates the arguments, builds the model and records on it what is needed to save
and re-create it:

- `model.arch_name`: the registered name;
- `model.arch_kwargs`: JSON-serializable keyword arguments, so that
  `create_model(model.arch_name, **model.arch_kwargs)` builds the same architecture;
- `model.input_shape`: (C, H, W) of one input image, for export and benchmarks.

Models take images in [0, 1]; their first submodule, `normalize`, applies mean/std.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.models.checkpoint import load_checkpoint, load_state_dict_checked, read_checkpoint

# The keyword arguments create_model resolves and passes to every builder.
STANDARD_ARGS = ("num_classes", "in_channels", "width", "input_size", "mean", "std")

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelConfig:
    """Defaults and a description of one registered architecture.

    Attributes:
        name: the registered name, e.g. 'preact_resnet18'.
        description: one line for listings.
        default_width: the base width (channels of the first stage) when none is given.
        input_shape: default (C, H, W) of an input image.
        num_classes: default number of classes.
        mean: default per-channel mean of `Normalize`, None for none.
        std: default per-channel std of `Normalize`, None for none.
    """

    name: str
    description: str
    default_width: int
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelArgs:
    """The standard arguments of every architecture, resolved and validated by `create_model`.

    Attributes:
        num_classes: number of outputs.
        in_channels: image channels.
        width: base width, the channels of the first stage.
        input_size: height and width of the square input images.
        mean: per-channel mean applied inside the model, None for none.
        std: per-channel std, None exactly when `mean` is.
    """

    num_classes: int
    in_channels: int
    width: int
    input_size: int
    mean: Sequence[float] | None
    std: Sequence[float] | None


@dataclass(frozen=True)
class _Entry:
    config: ModelConfig
    builder: Callable[..., nn.Module]
    extra_args: tuple[str, ...]
    # True: the builder takes one ModelArgs first; False: the STANDARD_ARGS as keywords.
    takes_model_args: bool


_REGISTRY: dict[str, _Entry] = {}


def register_model(config: ModelConfig) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder function under `config.name`.

    The builder's first parameter is `args: ModelArgs`, or it accepts the keyword arguments in
    `STANDARD_ARGS` instead; any other argument it takes must have a default, and becomes an
    extra keyword of `create_model` for it.

    Example:
        >>> @register_model(ModelConfig("tiny", "a tiny CNN", default_width=8))
        ... def tiny(args: ModelArgs) -> nn.Module: ...
    """

    def decorate(builder: Builder) -> Builder:
        if config.name in _REGISTRY:
            raise InvalidInputError(f"register_model: '{config.name}' is already registered")
        parameters = inspect.signature(builder).parameters
        takes_model_args = next(iter(parameters), None) == "args"
        standard = ("args",) if takes_model_args else STANDARD_ARGS
        lacking = [arg for arg in standard if arg not in parameters]
        no_default = [
            name
            for name, p in parameters.items()
            if name not in standard and p.default is inspect.Parameter.empty
        ]
        problems = []
        if lacking:
            problems.append(f"accept {', '.join(lacking)} (or take `args: ModelArgs` first)")
        if no_default:
            problems.append(f"give defaults to {', '.join(no_default)}")
        if problems:
            raise InvalidInputError(
                f"register_model: builder {builder.__name__} must {' and '.join(problems)}"
            )
        extras = tuple(name for name in parameters if name not in standard)
        _REGISTRY[config.name] = _Entry(config, builder, extras, takes_model_args)
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


def model_config(name: str) -> ModelConfig:
    """The `ModelConfig` of a registered architecture.

    Raises:
        InvalidInputError: unknown name (the message lists the known ones).
    """
    return _lookup(name).config


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    width: int | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered architecture, optionally loading weights; returned in eval mode.

    Args:
        name: a name from `list_models()`.
        num_classes: number of outputs. Defaults to the config's (10).
        in_channels: image channels. Defaults to the config's (3).
        width: base width, the channels of the first stage; later stages scale with it.
            Defaults to the config's (the published architecture).
        input_size: height and width of the square input images. Defaults to the config's
            (32). Every architecture also runs at 28 x 28.
        mean: per-channel mean applied inside the model. Defaults to the config's (none).
        std: per-channel std, given together with `mean`.
        checkpoint: weights to load: a file path, or a bare name resolved to
            `models_dir() / f"{name}.pt"`.
        **kwargs: extra arguments of the architecture (e.g. `dropout` of the WideResNets).

    Returns:
        The model, in eval mode, with `arch_name`, `arch_kwargs` and `input_shape` set.

    Raises:
        InvalidInputError: unknown name or argument, a bad value, or a checkpoint that does
            not fit.

    Example:
        >>> model = create_model("preact_resnet18", width=16, mean=[0.5] * 3, std=[0.25] * 3)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    entry = _lookup(name)
    config = entry.config
    num_classes = _positive_int("num_classes", num_classes, config.num_classes, name)
    in_channels = _positive_int("in_channels", in_channels, config.input_shape[0], name)
    width = _positive_int("width", width, config.default_width, name)
    input_size = _positive_int("input_size", input_size, config.input_shape[-1], name)
    mean = _per_channel("mean", config.mean if mean is None else mean, in_channels, name)
    std = _per_channel("std", config.std if std is None else std, in_channels, name)
    unknown = sorted(set(kwargs) - set(entry.extra_args))
    if unknown:
        raise InvalidInputError(
            f"create_model({name!r}) got unknown arguments {', '.join(unknown)}; it takes "
            f"{', '.join(STANDARD_ARGS + entry.extra_args)}"
        )
    args = ModelArgs(num_classes, in_channels, width, input_size, mean, std)
    arch_kwargs: dict[str, Any] = {**dataclasses.asdict(args), **kwargs}
    try:
        json.dumps(arch_kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"create_model({name!r}): extra arguments must be JSON-serializable, to be saved "
            f"with the checkpoint ({exc})"
        ) from exc
    if entry.takes_model_args:
        model = entry.builder(args, **kwargs)
    else:
        model = entry.builder(**arch_kwargs)
    model.arch_name = config.name
    model.arch_kwargs = arch_kwargs
    model.input_shape = (in_channels, input_size, input_size)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def load_model(checkpoint: str | os.PathLike[str]) -> nn.Module:
    """Re-create a model saved by `save_checkpoint`, weights included; in eval mode.

    Args:
        checkpoint: a file path, or a bare name resolved to `models_dir() / f"{name}.pt"`.

    Raises:
        InvalidInputError: the file is unreadable, or is a bare state_dict that does not say
            its architecture (use `create_model(name, checkpoint=path)` for those).
    """
    contents = read_checkpoint(checkpoint)
    if contents.arch is None or contents.arch_kwargs is None:
        raise InvalidInputError(
            f"checkpoint {contents.path} does not record its architecture (it is a plain "
            "state_dict); load it with create_model(name, checkpoint=path)"
        )
    model = create_model(contents.arch, **contents.arch_kwargs)
    load_state_dict_checked(model, contents.state_dict, source=f"checkpoint {contents.path}")
    return model


def _lookup(name: str) -> _Entry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise InvalidInputError(f"unknown model '{name}'; {hint}available: {', '.join(list_models())}")


def _positive_int(label: str, value: int | None, default: int, name: str) -> int:
    value = default if value is None else value
    # bool is an int subclass; True classes is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(
            f"create_model({name!r}): {label} must be a positive integer, got {value!r}"
        )
    return value


def _per_channel(
    label: str, values: Sequence[float] | None, in_channels: int, name: str
) -> list[float] | None:
    if values is None:
        return None
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"create_model({name!r}): {label} must be a sequence of numbers, got {values!r}"
        ) from exc
    if len(floats) != in_channels:
        raise InvalidInputError(
            f"create_model({name!r}): {label} has {len(floats)} values but in_channels is "
            f"{in_channels}; give one value per channel"
        )
    return floats
