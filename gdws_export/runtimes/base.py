"""The runner interface every runtime implements (after Polygraphy's runners)."""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from gdws_export._files import atomic_write_text, file_sha256, read_json_record
from gdws_export.errors import InvalidInputError

_Settings = TypeVar("_Settings", bound="SettingsFile")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None or a string for a dynamic axis) and numpy dtype of a graph input/output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


class Runner(ABC):
    """Runs one model on one runtime.

    Use as a context manager: `activate` loads the session/engine, `deactivate` frees it.

    Example:
        >>> with OrtRunner("model.onnx") as runner:            # doctest: +SKIP
        ...     logits = runner.infer({"input": x})["logits"]
    """

    name: str = "runner"

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def activate(self) -> None:
        """Load the model; called once before `infer`."""

    @abstractmethod
    def deactivate(self) -> None:
        """Free what `activate` loaded."""

    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The model's inputs, in order."""

    @abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """The model's outputs, in order."""

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: input name -> host array in, output name -> host array out."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run a single-input, single-output model (a classifier): images in, logits out."""
        (spec,) = self.inputs()
        out = self.infer({spec.name: np.ascontiguousarray(x, dtype=spec.dtype)})
        return out[self.outputs()[0].name]

    @property
    def times_device_separately(self) -> bool:
        """True when `time_compute` (device work) differs from `time_latency` (with copies)."""
        return False

    def time_compute(
        self, feed: dict[str, np.ndarray], *, iterations: int = 100, warmup: int = 10
    ) -> list[float]:
        """Milliseconds of model compute per run, one entry per timed run, after `warmup` runs.

        Host runtimes (ONNX Runtime on CPU) compute where the data lives, so the default is the
        wall clock of `infer`; device runtimes override it to leave out the copies (TensorRT
        times its GPU work with CUDA events).
        """
        return self._wall_clock_ms(feed, iterations, warmup)

    def time_latency(
        self, feed: dict[str, np.ndarray], *, iterations: int = 100, warmup: int = 10
    ) -> list[float]:
        """Milliseconds per run from host input to host output (trtexec's "host latency").

        Same as `time_compute` for host runtimes; device runtimes add host-to-device and
        device-to-host copies.
        """
        return self._wall_clock_ms(feed, iterations, warmup)

    def _wall_clock_ms(
        self, feed: dict[str, np.ndarray], iterations: int, warmup: int
    ) -> list[float]:
        check_timing_counts(iterations, warmup)
        for _ in range(warmup):
            self.infer(feed)
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            self.infer(feed)
            times.append((time.perf_counter() - start) * 1e3)
        return times


def image_input(runner: Runner, what: str) -> TensorSpec:
    """The one input of an active `runner` that serves image classifiers; `what` names it in
    the error ("engine 'gdws.onnx'").

    Raises:
        InvalidInputError: the graph takes several inputs or none.
    """
    specs = runner.inputs()
    if len(specs) != 1:
        raise InvalidInputError(
            f"{what} takes {len(specs)} inputs; the harness serves image classifiers with one "
            "image input"
        )
    return specs[0]


def check_timing_counts(iterations: int, warmup: int) -> None:
    """Raise InvalidInputError unless iterations >= 1 and warmup >= 0."""
    if iterations < 1 or warmup < 0:
        raise InvalidInputError(
            f"timing needs iterations >= 1 and warmup >= 0, got {iterations} and {warmup}"
        )


def time_cuda_ms(run, iterations: int, warmup: int, stream=None) -> list[float]:
    """Milliseconds of GPU work per call of `run`, from CUDA events around each call on
    `stream` (the current stream when None), after `warmup` untimed calls."""
    import torch

    for _ in range(warmup):
        run()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    for start, end in zip(starts, ends, strict=True):
        start.record(stream)
        run()
        end.record(stream)
    (stream or torch.cuda.current_stream()).synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)]


class SettingsFile:
    """A runner's settings dataclass, saved as JSON beside the file it runs.

    The file's path (the field `path_field` names) is stored relative to the JSON file, so the
    pair can be moved together. A subclass is a dataclass that sets `path_field` and
    `file_kind` ("ONNX Runtime settings file"); it gets to_dict, from_dict, save and load.
    """

    path_field: ClassVar[str]
    file_kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[_Settings], data: dict[str, Any]) -> _Settings:
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the settings to `path`, the run file's path made relative to its folder."""
        path = Path(path)
        data = self.to_dict()
        target = Path(getattr(self, self.path_field)).resolve()
        data[self.path_field] = os.path.relpath(target, path.parent.resolve())
        return atomic_write_text(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def loaded(cls: type[_Settings], settings: _Settings | str | os.PathLike) -> _Settings:
        """`settings` itself, or the settings saved at that path (`load`)."""
        return settings if isinstance(settings, cls) else cls.load(settings)

    def checked_file(self, sha256: str, name: str) -> Path:
        """The file these settings run (`name` says what it is), after checking that it is
        there and, when `sha256` is given, that it has not changed since they were saved."""
        path = Path(getattr(self, self.path_field))
        if not path.is_file():
            owner = self.file_kind.removesuffix(" file")
            raise InvalidInputError(f"{name} {path} of the {owner} is missing")
        if sha256 and file_sha256(path) != sha256:
            raise InvalidInputError(
                f"{path} changed since its settings were saved (SHA-256 differs); rebuild it"
            )
        return path

    @classmethod
    def load(cls: type[_Settings], path: str | os.PathLike) -> _Settings:
        """Read settings saved by `save`; the run file's path is resolved against the file's
        folder."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"{cls.file_kind} {path} does not exist")
        article = "an" if cls.file_kind[0] in "AEIOU" else "a"
        settings = read_json_record(cls, path, f"{article} {cls.file_kind}")
        setattr(
            settings, cls.path_field, os.fspath(path.parent / getattr(settings, cls.path_field))
        )
        return settings
