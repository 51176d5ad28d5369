"""The runner interface every runtime implements (after Polygraphy's runners)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


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
