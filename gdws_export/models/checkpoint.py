"""Reading and writing model checkpoints.

Two kinds of files load:

- a bare `state_dict`, or a dict holding one under 'state_dict', 'model', 'model_state_dict' or
  'net' (what the usual CIFAR training repositories write), with or without the 'module.' prefix
  of `nn.DataParallel`;
- the project's own format, written by `save_checkpoint`: the `state_dict` plus the
  architecture name and the arguments that re-create it (`arch`, `arch_kwargs`), so that
  `load_model` needs nothing but the file.

Every file is read with `torch.load(weights_only=True)`, which refuses pickled code.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdws_export._files import atomic_write_bytes
from gdws_export.errors import InvalidInputError, plain_line

MODELS_DIR_ENV = "GDWS_EXPORT_MODELS"
CHECKPOINT_FORMAT = "gdws-export/checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

# Where other repositories nest the state_dict inside a bigger dict, in the order tried.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes added by wrappers: nn.DataParallel / DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_KEYS_SHOWN = 4


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint file, whatever format it was written in.

    `arch` and `arch_kwargs` are None unless the file is in the project's own format.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def models_dir() -> Path:
    """The folder that bare checkpoint names resolve in.

    Defaults to the repository's top-level `models/` folder (next to the `gdws_export`
    package), which holds `<name>.pt` checkpoints and their `<name>.json` model cards. The
    environment variable `GDWS_EXPORT_MODELS` overrides it (needed when the package is
    installed rather than run from a checkout).
    """
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "models"


def resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> Path:
    """Turn a file path, or a bare name such as 'lenet_fmnist', into an existing file path.

    A bare name (no folder part) that is not a file in the working directory resolves to
    `models_dir() / f"{name}.pt"`.

    Raises:
        InvalidInputError: neither the file nor the named checkpoint exists.
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    is_bare_name = isinstance(checkpoint, str) and path.name == checkpoint
    if not is_bare_name:
        raise InvalidInputError(f"checkpoint file {path} does not exist; check the path")
    folder = models_dir()
    candidate = folder / f"{checkpoint}.pt"
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
    raise InvalidInputError(
        f"checkpoint '{checkpoint}' is neither a file nor a name in {folder} "
        f"(available there: {', '.join(available) or 'none'}); pass a file path, or set "
        f"{MODELS_DIR_ENV} to the folder that holds '{checkpoint}.pt'"
    )


def read_checkpoint(checkpoint: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file (a path or a bare name, see `resolve_checkpoint`).

    Raises:
        InvalidInputError: the file is missing, corrupt, pickles objects other than tensors
            and plain containers, or holds no state_dict.
    """
    path = resolve_checkpoint(checkpoint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4": not the user's news
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to deserialize means the file is unusable
        reason = plain_line(str(exc)) or type(exc).__name__
        raise InvalidInputError(
            f"checkpoint {path} cannot be read with torch.load(weights_only=True) ({reason}); it "
            "is corrupt, not a PyTorch file, or pickles whole objects such as an nn.Module: "
            "re-save the model's state_dict"
        ) from exc
    if not isinstance(contents, Mapping):
        raise InvalidInputError(
            f"checkpoint {path} holds a {type(contents).__name__}, not a state_dict; "
            "save model.state_dict() instead"
        )
    if contents.get("format") == CHECKPOINT_FORMAT:
        if not (
            isinstance(contents.get("arch"), str)
            and isinstance(contents.get("arch_kwargs"), Mapping)
            and isinstance(contents.get("state_dict"), Mapping)
        ):
            raise InvalidInputError(
                f"checkpoint {path} is in the gdws-export format but lacks 'arch', "
                "'arch_kwargs' or 'state_dict'; it is damaged: save it again"
            )
        return Checkpoint(
            path=path,
            state_dict=_tensors_only(contents["state_dict"], path),
            arch=contents["arch"],
            arch_kwargs=dict(contents["arch_kwargs"]),
            metadata=dict(contents.get("metadata", {})),
        )
    for key in _STATE_DICT_KEYS:
        if isinstance(contents.get(key), Mapping):
            return Checkpoint(path=path, state_dict=_tensors_only(contents[key], path))
    if contents and all(isinstance(v, torch.Tensor) for v in contents.values()):
        return Checkpoint(path=path, state_dict=_tensors_only(contents, path))
    raise InvalidInputError(
        f"checkpoint {path} holds no state_dict (top-level keys: {_preview(list(contents))}); "
        f"expected a dict of tensors, or one under {', '.join(map(repr, _STATE_DICT_KEYS))}"
    )


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint's weights into `model`, in place, checking every key and shape.

    Args:
        model: the module to fill; a model from `create_model` is also checked against the
            architecture and arguments a project-format file was saved with.
        checkpoint: a file path, or a bare name resolved in `models_dir()`.

    Returns:
        The metadata saved with the file (empty for files in other formats).

    Raises:
        InvalidInputError: the file cannot be read, or its keys or shapes do not fit `model`
            (the message names the missing, unexpected and mismatched keys).
    """
    contents = read_checkpoint(checkpoint)
    _check_arch(model, contents)
    load_state_dict_checked(model, contents.state_dict, source=f"checkpoint {contents.path}")
    return contents.metadata


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """`model.load_state_dict(state_dict)`, with one error naming every kind of misfit.

    Raises:
        InvalidInputError: keys are missing or unexpected, or shapes differ.
    """
    expected = model.state_dict()
    # BatchNorm fills in a missing counter itself (files from before torch 0.4.1 lack it).
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} in the file vs {tuple(expected[k].shape)} in the model"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        _count_and_preview(keys, what)
        for keys, what in (
            (missing, "missing key"),
            (unexpected, "unexpected key"),
            (mismatched, "shape mismatch"),
        )
        if keys
    ]
    if problems:
        name = getattr(model, "arch_name", type(model).__name__)
        raise InvalidInputError(
            f"{source} does not fit the model {name}: {'; '.join(problems)}; check the "
            "architecture, num_classes, in_channels and width it was trained with"
        )
    model.load_state_dict(dict(state_dict))


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    weights_dtype: torch.dtype | None = None,
    **metadata: Any,
) -> Path:
    """Save a model made by `create_model` in the project's format, atomically.

    The file holds the weights, the architecture name and its `arch_kwargs`, so `load_model`
    re-creates the model from the file alone. It is written to a temporary name in the same
    folder and renamed at the end, so a failed save leaves no file that looks complete.

    Args:
        model: a model from `create_model` (it carries `arch_name` and `arch_kwargs`).
        path: where to write, conventionally `<name>.pt`.
        weights_dtype: store the floating-point tensors in this dtype (e.g. torch.float16,
            half the file); `load_model` casts them back to the model's dtype. Default: as
            they are.
        **metadata: JSON-serializable facts to keep with the weights (dataset, accuracy,
            training settings); `load_checkpoint` returns them.

    Returns:
        The path written.

    Example:
        >>> save_checkpoint(model, "models/lenet_fmnist.pt", dataset="fashion-mnist")
    """
    arch = getattr(model, "arch_name", None)
    arch_kwargs = getattr(model, "arch_kwargs", None)
    if arch is None or arch_kwargs is None:
        raise InvalidInputError(
            f"save_checkpoint: the {type(model).__name__} has no arch_name/arch_kwargs; create "
            "it with create_model, or save model.state_dict() with torch.save"
        )
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"save_checkpoint: metadata must be JSON-serializable ({exc}); pass numbers, "
            "strings, lists and dicts"
        ) from exc
    contents = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {
            k: _stored(v.detach().cpu(), weights_dtype) for k, v in model.state_dict().items()
        },
        "metadata": metadata,
    }
    # Serialized in memory: torch.save names the archive after the file it writes, so saving
    # to a temporary name would make identical weights hash differently.
    buffer = io.BytesIO()
    torch.save(contents, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The tensor as saved: floating-point ones in `dtype` when given, others as they are."""
    if dtype is None or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def _check_arch(model: nn.Module, contents: Checkpoint) -> None:
    """A project-format file must match the model's architecture and arguments."""
    if contents.arch is None:
        return
    arch = getattr(model, "arch_name", None)
    if arch is not None and arch != contents.arch:
        raise InvalidInputError(
            f"checkpoint {contents.path} holds a '{contents.arch}' model, not '{arch}'; load it "
            "with load_model(path), or create the model with the architecture it was saved as"
        )
    model_kwargs = getattr(model, "arch_kwargs", None) or {}
    differ = [
        f"{k}={contents.arch_kwargs[k]!r} in the file vs {model_kwargs[k]!r}"
        for k in sorted(set(model_kwargs) & set(contents.arch_kwargs or {}))
        if contents.arch_kwargs[k] != model_kwargs[k]
    ]
    if differ:
        # Checked because mean/std are not in the state_dict: a mismatch would load silently.
        raise InvalidInputError(
            f"checkpoint {contents.path} was saved with other arguments ({'; '.join(differ)}); "
            "load it with load_model(path), or pass the same arguments to create_model"
        )


def _tensors_only(state_dict: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The state_dict with wrapper prefixes removed; refuses non-tensor entries."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidInputError(
                f"checkpoint {path}: state_dict entry '{key}' is a {type(value).__name__}, "
                "not a tensor; save model.state_dict()"
            )
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def _count_and_preview(items: list[str], what: str) -> str:
    plural = "es" if what.endswith("ch") else "s"
    label = what if len(items) == 1 else what + plural
    return f"{len(items)} {label} ({_preview(items)})"


def _preview(items: list[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:_KEYS_SHOWN])
    more = len(items) - _KEYS_SHOWN
    return shown + (f", ... {more} more" if more > 0 else "")
