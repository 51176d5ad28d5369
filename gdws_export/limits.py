"""How big an input may be: hard caps on sizes and a memory budget, checked from shapes alone.

Every rule about sizes lives here, and each check runs before the tensors it guards are
allocated, so an absurd `--input-shape`, `--batch` or architecture width is a one-line error
(exit 2) instead of a run that climbs past the machine's memory.

- Batch sizes (`--batch`, `--batch-sizes`, `--eval-batch-size`): at most `MAX_BATCH`.
- Each input dimension (C, H, W): at most `MAX_INPUT_DIM`.
- Memory: parameter bytes plus the activation bytes of one forward pass at the run's batch
  (`estimate_model_memory`, computed on the `meta` device, which allocates nothing) must fit
  in the memory limit: `MEMORY_FRACTION` of the memory available when the run starts
  (MemAvailable in /proc/meminfo, else physical memory; within a cgroup's limit), or the
  size in the environment variable `GDWS_EXPORT_MEMORY_LIMIT` ("16G", "512M", bytes). The
  estimate is a floor (an export also holds copies of the model, ONNX graphs and runtime
  sessions), so the limit catches the absurd, not the merely large.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdws_export.errors import InvalidInputError

MAX_BATCH = 65536
MAX_INPUT_DIM = 65536  # per axis of one image (C, H, W)
MEMORY_LIMIT_ENV = "GDWS_EXPORT_MEMORY_LIMIT"
MEMORY_FRACTION = 0.5  # of the available memory: the estimate leaves out the run's copies
_MEMINFO = Path("/proc/meminfo")
_CGROUP_MAX = Path("/sys/fs/cgroup/memory.max")
_CGROUP_CURRENT = Path("/sys/fs/cgroup/memory.current")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_BYTES_PER_VALUE = 4  # float32 tensors throughout


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs: its parameters and buffers, and one forward pass's activations."""

    parameters: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.activations


def check_batch(option: str, value: Any) -> None:
    """Raise InvalidInputError unless `value` is an integer batch size in [1, MAX_BATCH]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{option} must be a positive integer, got {value!r}")
    if value > MAX_BATCH:
        raise InvalidInputError(f"{option} {value} is larger than the limit of {MAX_BATCH}")


def check_input_dims(option: str, dims: Sequence[int]) -> None:
    """Raise InvalidInputError unless every dimension of an input shape is in [1, MAX_INPUT_DIM]."""
    shape = "x".join(map(str, dims))
    if any(d < 1 for d in dims):
        raise InvalidInputError(f"{option} {shape} must have positive sizes")
    if any(d > MAX_INPUT_DIM for d in dims):
        raise InvalidInputError(
            f"{option} {shape} has a dimension over the limit of {MAX_INPUT_DIM} per axis"
        )


def memory_limit() -> tuple[int, str]:
    """(bytes, how they were chosen): `GDWS_EXPORT_MEMORY_LIMIT`, else a fraction of free memory.

    Raises:
        InvalidInputError: the environment variable is not a size such as "16G".
    """
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text, flags=re.IGNORECASE)
        if match is None:
            raise InvalidInputError(
                f"{MEMORY_LIMIT_ENV}={text!r} is not a size; write e.g. 16G, 512M or bytes"
            )
        limit = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
        return limit, f"set by {MEMORY_LIMIT_ENV}"
    available = _available_memory()
    share = f"{MEMORY_FRACTION:.0%} of the {format_bytes(available)} available"
    return int(available * MEMORY_FRACTION), f"{share}; {MEMORY_LIMIT_ENV} overrides it"


def check_memory(what: str, needed: int, detail: str = "") -> None:
    """Raise InvalidInputError when `needed` bytes exceed `memory_limit()`.

    Args:
        what: what needs the memory, as the user wrote it ("--input-shape 3x999x999 at batch 1").
        needed: the estimate in bytes.
        detail: how the estimate splits (parameters, activations), for the message.
    """
    limit, source = memory_limit()
    if needed > limit:
        split = f" ({detail})" if detail else ""
        raise InvalidInputError(
            f"{what} needs an estimated {format_bytes(needed)}{split}, over the memory limit of "
            f"{format_bytes(limit)} ({source})"
        )


def check_model_memory(what: str, estimate: MemoryEstimate) -> None:
    """`check_memory` for a model's estimate, with its parameter and activation split."""
    detail = (
        f"parameters {format_bytes(estimate.parameters)}, activations "
        f"{format_bytes(estimate.activations)}"
    )
    check_memory(what, estimate.total, detail)


def input_bytes(shape: Sequence[int], batch: int = 1) -> int:
    """Bytes of a float32 batch of inputs of shape (C, H, W)."""
    count = batch
    for dim in shape:
        count *= int(dim)
    return count * _BYTES_PER_VALUE


def estimate_model_memory(model, input_shape: Sequence[int], batch: int = 1) -> MemoryEstimate:
    """Parameter and activation bytes of `model` for one forward at `batch`, allocating nothing.

    The forward runs on the `meta` device with the parameters swapped for meta tensors
    (`torch.func.functional_call`); activations are the outputs of every leaf module plus the
    input. A forward the meta device cannot run (data-dependent control flow, tensors that
    are not parameters or buffers) falls back to shape arithmetic: the input plus one
    full-resolution feature map of the widest conv, a floor.
    """
    import torch
    from torch import nn

    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    parameters = sum(t.numel() * t.element_size() for t in tensors.values())
    outputs: list[int] = []

    def count(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel() * output.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(count) for leaf in leaves]
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    x = torch.empty(batch, *input_shape, device="meta")
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, (x,))
        activations = sum(outputs)
    except Exception:  # any forward the meta device cannot follow: the floor below
        widest = max([m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] or [0])
        pixels = input_bytes(input_shape[1:], batch)
        activations = widest * pixels
    finally:
        for hook in hooks:
            hook.remove()
    return MemoryEstimate(parameters, input_bytes(input_shape, batch) + activations)


def estimate_arch_memory(
    arch: str, arch_kwargs: Mapping[str, Any], input_shape: Sequence[int] | None, batch: int = 1
) -> MemoryEstimate | None:
    """`estimate_model_memory` of a registered architecture built on the `meta` device.

    `input_shape` (C, H, W) sets in_channels and input_size unless `arch_kwargs` gives them,
    as the loader does. Returns None when the architecture cannot be built (an unknown name,
    a bad argument): the loader reports those.
    """
    import torch

    from gdws_export.models import create_model

    kwargs = dict(arch_kwargs)
    if input_shape is not None:
        kwargs = {"in_channels": input_shape[0], "input_size": input_shape[-1], **kwargs}
    try:
        with torch.device("meta"):
            model = create_model(arch, **kwargs)
    except Exception:  # the loader builds it again and says what is wrong
        return None
    return estimate_model_memory(model, tuple(model.input_shape), batch)


def format_bytes(count: float) -> str:
    """'1.5 GiB', '12.0 MiB', '512 B'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory; in a container
    with a cgroup memory limit, at most what the limit leaves."""
    available = None
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 2**40  # unknown: the hard caps still apply
    try:  # /proc/meminfo shows the host's memory inside a container
        cap = _CGROUP_MAX.read_text().strip()
        if cap != "max":
            available = min(available, int(cap) - int(_CGROUP_CURRENT.read_text()))
    except (OSError, ValueError):
        pass
    return max(available, 0)
