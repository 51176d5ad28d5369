"""What the export's stages share: the state they hand on, the clock that times them and
reports progress, and the batch sizes and inputs every stage uses alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gdws_export.loading import LoadedModel
from gdws_export.pipeline.config import ExportConfig
from gdws_export.pipeline.engine import EngineCheck

# stage -> what the progress line says while it runs
STAGES = {
    "load": "loading the model",
    "data": "reading calibration data",
    "alphas": "computing alphas",
    "layer_costs": "timing every replaceable conv",
    "approximate": "replacing convs by GDWS convs",
    "refit": "refitting the 1x1 convs on the calibration data",
    "choose": "choosing the sensitivity on held-out calibration images",
    "search": "judging a candidate on held-out calibration images",
    "rank_exact": "ranking the layers to keep exact on the calibration images",
    "held_out": "measuring the original and the shipped engine on held-out images",
    "export_original": "exporting the original ONNX graph",
    "export_gdws": "exporting the GDWS ONNX graph",
    "export_program": "saving what ships as a torch.export program",
    "build": "building the engine",
    "check_engine": "checking the engine against its source",
}


PARITY_INPUTS = 16


# progress(stage, label, seconds): seconds is None when the stage starts, its duration after.
ProgressCallback = Callable[[str, str, float | None], None]


@dataclass
class Alphas:
    """One measure's alphas: values (None: unweighted), input moments (activation-aware
    only), whether they were computed here (then saved as alphas.pt), and their source."""

    measure: str
    alphas: dict[str, torch.Tensor] | None
    moments: dict[str, torch.Tensor] | None
    computed: bool
    source: str


class ExportState:
    """What the stages hand to each other (models, data, alphas)."""

    def __init__(self, loaded: LoadedModel, model: nn.Module, shape: tuple[int, int, int]):
        self.loaded, self.model, self.shape = loaded, model, shape
        self.gdws_model: nn.Module | None = None
        # what ships: gdws_model with the convs gdws.onnx keeps put back (set on export)
        self.shipped_model: nn.Module | None = None
        self.data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.held_out: tuple[torch.Tensor, torch.Tensor] | None = None  # sensitivity "auto"
        self.alphas: Alphas | None = None
        self.alphas_by_measure: dict[str, Alphas] = {}  # computed once, whatever the budget
        self.layer_costs: dict | None = None  # --time-ratio's measured costs, once
        self.engine: EngineCheck | None = None

    def for_another_export(self) -> ExportState:
        """A state for one more export of the same model (a sweep's next setting): the model,
        data, alphas and layer costs shared, nothing of what the last export shipped."""
        other = ExportState(self.loaded, self.model, self.shape)
        other.data, other.held_out = self.data, self.held_out
        other.alphas_by_measure, other.layer_costs = self.alphas_by_measure, self.layer_costs
        return other


class Clock:
    """Times stages and reports them to the progress callback."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str, detail: str = "") -> Iterator[None]:
        label = STAGES[stage] + detail
        if self.progress:
            self.progress(stage, label, None)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        # a stage run once per candidate measure ("auto") adds up
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)
        if self.progress:
            self.progress(stage, label, seconds)


def engine_batch(cfg: ExportConfig, state: ExportState) -> int:
    """The batch the engine is exported and timed at: the model's fixed batch, or --batch."""
    return state.loaded.fixed_batch or cfg.batch or 1


def attack_batch(state: ExportState) -> int:
    """Images per attack batch on held-out images: the same everywhere, so the same model and
    images get the same adversarial images (each batch draws its own random start)."""
    return state.loaded.fixed_batch or 128


def parity_inputs(state: ExportState, seed: int) -> np.ndarray:
    if state.data is not None:
        return state.data[0][:PARITY_INPUTS].numpy()
    rng = np.random.default_rng(seed)
    return rng.random((PARITY_INPUTS, *state.shape), dtype=np.float32)
