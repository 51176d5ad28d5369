"""Load a model file of any usual kind as an eager `nn.Module` that GDWS can edit.

The kind is detected from the file's content, never by running it:

- a state_dict, or a checkpoint dict holding one under the usual keys, with `arch=` naming a
  registered architecture; the project's own checkpoints (`save_checkpoint`) name theirs;
- a TorchScript archive (`torch.jit.save`): with `arch=` its weights load into the registered
  architecture; otherwise it is converted to a `torch.export` program (TorchScript runs only
  TorchScript ops, never Python) and handled as below;
- a `torch.export` program (`.pt2`, `torch.export.save`): its graph names torch ops only, but
  `torch.export.load` unpickles some members without weights_only, so an archive with any
  member it would run code from (see `gate.program_hazards`) is refused unless
  `trust_pickle=True`;
- a whole pickled `nn.Module` (`torch.save(model)`): loading it runs code from the file, so it
  is refused unless `trust_pickle=True`.

Programs (TorchScript converted, `.pt2`) become an `fx.GraphModule` whose convolutions (aten
calls in the graph) are turned back into `nn.Conv2d` submodules under their original names
(`features.0`), so `approximate` can swap them like any other model's, and alphas computed on
the eager model apply.

Every model is returned in eval mode, checked for NaN/Inf weights.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdws_export._files import check_zip_integrity
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.loading.detect import FORMAT_NAMES, detect_format, first_line, pickle_globals
from gdws_export.loading.gate import check_program_archive
from gdws_export.loading.programs import program_module, torchscript_program
from gdws_export.models import create_model, list_models, read_checkpoint
from gdws_export.models.checkpoint import load_state_dict_checked, resolve_checkpoint

# Keys under which training scripts keep a whole model inside a pickled dict.
_MODULE_KEYS = ("model", "net", "module", "state_dict")
# How many names an error message lists before "... N more".
_SHOWN = 4


@dataclass
class LoadedModel:
    """A model read from a file, ready for `approximate`.

    Attributes:
        module: the model, in eval mode.
        kind: what the file held: "checkpoint" (gdws-export format), "state_dict",
            "torchscript" (weights loaded into `arch`), "torchscript_program" (converted),
            "torch_export" or "pickled_module".
        path: the file read.
        input_shape: (C, H, W) of one input when the file or the architecture says it.
        arch: the registered architecture, when one was built.
        arch_kwargs: its keyword arguments.
        fixed_batch: the batch size a program was exported with when its batch axis is static.
        trained_eps: the L-inf radius a gdws-export checkpoint records it was adversarially
            trained at (its metadata's training eps and norm), else None.
        notes: what the loader decided, one line each, for the report.
    """

    module: nn.Module
    kind: str
    path: Path
    input_shape: tuple[int, int, int] | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    fixed_batch: int | None = None
    trained_eps: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description (the module left out)."""
        return {
            "path": os.fspath(self.path),
            "kind": self.kind,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "fixed_batch": self.fixed_batch,
            "trained_eps": self.trained_eps,
            "notes": list(self.notes),
        }


def load_model_file(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, int, int] | None = None,
) -> LoadedModel:
    """Read a model file of any supported kind (see the module docstring).

    Args:
        path: the file, or a bare checkpoint name resolved in `models_dir()`.
        arch: registered architecture for state_dicts and TorchScript archives (see
            `list_models()`); not needed for gdws-export checkpoints.
        num_classes: classes of `arch`; defaults to the architecture's.
        arch_kwargs: other keyword arguments of `create_model` for `arch`.
        trust_pickle: allow loading a whole pickled nn.Module, which runs code from the file.
        input_shape: (C, H, W) of one input; needed for TorchScript programs that do not
            record it, and passed to `arch` as in_channels / input_size.

    Returns:
        The LoadedModel.

    Raises:
        InvalidInputError: a missing, corrupt or unrecognised file, a pickle that would run
            code (without `trust_pickle`), a state_dict without `arch` or not matching it,
            an unknown architecture, NaN/Inf weights, a bad input shape.
        UnsupportedModelError: a TorchScript archive that cannot be made editable.

    Example:
        >>> loaded = load_model_file("lenet.pt", arch="lenet", num_classes=10)  # doctest: +SKIP
        >>> loaded.module, loaded.input_shape                                  # doctest: +SKIP
    """
    file = _resolve(path)
    shape = _check_shape(input_shape)
    kwargs = dict(arch_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    fmt = detect_format(file)
    if kwargs and arch is None:
        raise InvalidInputError("--num-classes and --arch-kwargs go with --arch NAME; add it")
    if fmt == "torch_export" and arch is not None:
        _no_arch_for(file, FORMAT_NAMES[fmt])
    if fmt != "pickle":  # a zip archive: PyTorch's reader would not notice a damaged member
        check_zip_integrity(file, FORMAT_NAMES[fmt])
    if fmt == "torchscript":
        loaded = _load_torchscript(file, arch, kwargs, shape)
    elif fmt == "torch_export":
        check_program_archive(
            file, trust_pickle=trust_pickle,
            advice="if you trust the file, pass --trust-pickle (trust_pickle=True)",
        )  # fmt: skip
        try:
            program = torch.export.load(file)
        except Exception as exc:  # a damaged archive fails anywhere in deserialization
            raise InvalidInputError(
                f"torch.export program {file} cannot be loaded ({type(exc).__name__}: "
                f"{first_line(exc)}); it is corrupt or was written by another PyTorch version"
            ) from exc
        loaded = _from_program(program, file, "torch_export", shape)
    else:
        loaded = _load_pickled(file, arch, kwargs, shape, trust_pickle)
    check_finite(loaded.module, file)
    loaded.module.eval()
    return loaded


def _resolve(path: str | os.PathLike[str]) -> Path:
    """An existing model file; a bare name (no folder, no suffix) may name one in models_dir()."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise InvalidInputError(f"model file {file} is a directory; pass the model file itself")
    if file.is_file() or (isinstance(path, str) and file.name == path and not file.suffix):
        return resolve_checkpoint(path)
    raise InvalidInputError(f"model file {file} does not exist; check the path")


def _no_arch_for(file: Path, what: str) -> None:
    raise InvalidInputError(
        f"{file} is a {what}, which carries its own architecture; --arch, --num-classes and "
        "--arch-kwargs apply to state_dicts and TorchScript archives only: leave them out"
    )


def check_finite(model: nn.Module, where: str | os.PathLike[str] = "the model") -> None:
    """Raise InvalidInputError naming the first parameter or buffer holding NaN or Inf."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InvalidInputError(
                f"{where}: '{name}' contains NaN or Inf values; the model is damaged (a diverged "
                "training run?): use another checkpoint"
            )


def _check_shape(shape) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"input_shape must be (C, H, W), got {shape!r}") from exc
    if len(dims) != 3 or min(dims) < 1:
        raise InvalidInputError(f"input_shape must be (C, H, W) of positive sizes, got {shape!r}")
    return dims


def _load_pickled(file, arch, kwargs, shape, trust_pickle) -> LoadedModel:
    try:
        contents = read_checkpoint(file)
    except InvalidInputError as exc:
        if not _refused_by_weights_only(exc):
            raise
        return _load_trusted_pickle(file, shape, trust_pickle, arch)
    if contents.arch is not None:
        return _from_project_checkpoint(contents, arch, kwargs, shape)
    if arch is None:
        raise InvalidInputError(
            f"{file} is a state_dict, which does not say its architecture; pass --arch NAME "
            f"(one of {', '.join(list_models())}), and --num-classes if not 10"
        )
    model = _create(arch, kwargs, shape)
    load_state_dict_checked(model, contents.state_dict, source=f"state_dict {file}")
    return _registry_loaded(model, "state_dict", file, [f"state_dict loaded into '{arch}'"])


def _refused_by_weights_only(exc: InvalidInputError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, pickle.UnpicklingError) and "weights only" in str(cause).lower()


def _load_trusted_pickle(file: Path, shape, trust_pickle: bool, arch) -> LoadedModel:
    names = pickle_globals(file)
    shown = ", ".join(names[:_SHOWN]) + (
        f", ... {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    )
    if not trust_pickle and not names:
        raise InvalidInputError(
            f"{file} is a pickle that PyTorch's weights-only loader cannot read (an old pickle "
            "protocol?), so it was not loaded; re-save it with torch.save's defaults, or pass "
            "--trust-pickle (trust_pickle=True) if you trust the file"
        )
    if not trust_pickle:
        raise InvalidInputError(
            f"{file} pickles Python objects ({shown}); loading it would run "
            "code from the file, so it was not loaded. If you trust the file, pass "
            "--trust-pickle (trust_pickle=True); better, save model.state_dict() and pass --arch"
        )
    try:
        contents = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # the file's own code can fail in any way
        raise InvalidInputError(
            f"{file} could not be unpickled even with --trust-pickle ({type(exc).__name__}: "
            f"{first_line(exc)}); the classes it names ({shown}) must be importable"
        ) from exc
    module = contents
    if isinstance(contents, Mapping):
        module = next((contents[k] for k in _MODULE_KEYS if isinstance(contents.get(k), nn.Module)),
                      contents)  # fmt: skip
    if not isinstance(module, nn.Module):
        raise InvalidInputError(
            f"{file} holds a {type(contents).__name__}, not an nn.Module, a state_dict or a "
            "checkpoint dict holding one; save the model or its state_dict"
        )
    if arch is not None:
        _no_arch_for(file, "pickled nn.Module")
    notes = ["whole pickled nn.Module, loaded with --trust-pickle (ran code from the file)"]
    if isinstance(module, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            f"{file} holds a TorchScript module pickled inside a dict; save it with "
            "torch.jit.save and pass that file"
        )
    input_shape = shape or _shape_attribute(module)
    arch = getattr(module, "arch_name", None)
    return LoadedModel(module, "pickled_module", file, input_shape, arch,
                       getattr(module, "arch_kwargs", None), notes=notes)  # fmt: skip


def _from_project_checkpoint(contents, arch, kwargs, shape) -> LoadedModel:
    file = contents.path
    if arch is not None and arch != contents.arch:
        raise InvalidInputError(
            f"{file} is a gdws-export checkpoint of '{contents.arch}', not '{arch}'; leave out "
            "--arch (the file says its architecture)"
        )
    saved = dict(contents.arch_kwargs or {})
    differ = [f"{k}={v!r} (file: {saved.get(k)!r})" for k, v in kwargs.items() if saved.get(k) != v]
    if differ:
        raise InvalidInputError(
            f"{file} was saved with other arguments than asked: {', '.join(differ)}; leave "
            "them out, the checkpoint records its own"
        )
    model = create_model(contents.arch, **saved)
    load_state_dict_checked(model, contents.state_dict, source=f"checkpoint {file}")
    loaded = _registry_loaded(
        model, "checkpoint", file, [f"gdws-export checkpoint of '{contents.arch}'"]
    )
    loaded.trained_eps = _trained_linf_eps(contents.metadata)
    _check_shape_agrees(loaded, shape)
    return loaded


def _trained_linf_eps(metadata: Mapping[str, Any]) -> float | None:
    """The L-inf eps of the adversarial training a checkpoint's metadata records, or None."""
    training = metadata.get("training") if isinstance(metadata, Mapping) else None
    if not isinstance(training, Mapping) or training.get("norm", "linf") != "linf":
        return None
    eps = training.get("eps")
    valid = isinstance(eps, int | float) and not isinstance(eps, bool) and 0 < eps < 1
    return float(eps) if valid else None


def _create(arch: str, kwargs: dict[str, Any], shape) -> nn.Module:
    """create_model, taking in_channels and input_size from the input shape when not given."""
    if shape is not None:
        channels, height, width = shape
        if height != width and "input_size" not in kwargs:
            raise InvalidInputError(
                f"architecture '{arch}' takes square inputs, got input shape {shape}; pass a "
                "square --input-shape"
            )
        kwargs = {"in_channels": channels, "input_size": height, **kwargs}
    return create_model(arch, **kwargs)


def _registry_loaded(model: nn.Module, kind: str, file: Path, notes: list[str]) -> LoadedModel:
    return LoadedModel(
        model, kind, file, tuple(model.input_shape), model.arch_name, dict(model.arch_kwargs),
        notes=notes,
    )  # fmt: skip


def _check_shape_agrees(loaded: LoadedModel, shape) -> None:
    if shape is not None and loaded.input_shape is not None and tuple(shape) != loaded.input_shape:
        raise InvalidInputError(
            f"{loaded.path} takes inputs of shape {loaded.input_shape}, not {tuple(shape)}; "
            "fix --input-shape or leave it out"
        )


def _load_torchscript(file: Path, arch, kwargs, shape) -> LoadedModel:
    try:
        scripted = torch.jit.load(file, map_location="cpu")
    except Exception as exc:  # corrupt archives raise RuntimeError with a C++ message
        raise InvalidInputError(
            f"TorchScript archive {file} cannot be loaded ({first_line(exc)}); it is corrupt "
            "or was written by a newer PyTorch"
        ) from exc
    if arch is not None:
        state = dict(scripted.state_dict())
        # Registry models keep mean/std in non-persistent buffers that a scripted module saves.
        for key in ("mean", "std"):
            value = state.pop(f"normalize.{key}", None)
            if value is not None and key not in kwargs:
                kwargs[key] = value.flatten().tolist()
        model = _create(arch, kwargs, shape)
        load_state_dict_checked(model, state, source=f"TorchScript archive {file}")
        return _registry_loaded(
            model, "torchscript", file, [f"TorchScript weights loaded into '{arch}'"]
        )
    shape = shape or _shape_attribute(scripted)
    if shape is None:
        raise InvalidInputError(
            f"TorchScript archive {file} does not record its input shape; pass --input-shape "
            "(e.g. 1x3x32x32)"
        )
    program = torchscript_program(scripted, file, shape)
    loaded = _from_program(program, file, "torchscript_program", shape)
    loaded.notes.insert(0, "TorchScript converted to a torch.export program")
    return loaded


def _from_program(program, file: Path, kind: str, shape) -> LoadedModel:
    made = program_module(program, file, shape)
    return LoadedModel(made.module, kind, file, made.input_shape, fixed_batch=made.fixed_batch,
                       notes=made.notes)  # fmt: skip


def _shape_attribute(module) -> tuple[int, int, int] | None:
    shape = getattr(module, "input_shape", None)
    try:
        return _check_shape(shape)
    except InvalidInputError:
        return None


__all__ = ["LoadedModel", "check_finite", "load_model_file"]
