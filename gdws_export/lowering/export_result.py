"""What `export_onnx` wrote and how: `ExportResult`, with one `LayerLowering` per GDWS conv."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gdws_export.lowering.parity import ParityReport


@dataclass
class LayerLowering:
    """How one GDWS conv was lowered.

    Attributes:
        name: module name.
        form: the lowering form shipped ("dense" = the original conv kept).
        kernels: G, the GDWS kernels kept; kernels_per_channel: g_c per input channel.
        macs_original / macs_gdws: multiply-accumulates per image of the original conv and of
            the GDWS conv (padding kernels of grouped convs included).
        median_ms / p90_ms / fastest_ms: `auto` timings per candidate form (empty for a fixed
            lowering); the fastest round decides.
        notes: fallbacks and candidates left out, one line each.
    """

    name: str
    form: str
    kernels: int
    kernels_per_channel: list[int]
    macs_original: int
    macs_gdws: int
    median_ms: dict[str, float] = field(default_factory=dict)
    p90_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fastest_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how: paths, per-layer lowering, parity, settings.

    With `auto`, `network_ms` holds the whole-model [median, p90, fastest round]
    milliseconds per batch of the per-layer choice ("auto"), the reference lowering ("gather")
    and the original convs ("dense"), and `network_plan` the one shipped (the fastest round
    decides; a GDWS plan must beat "dense" by `speed_margin`). A GDWS plan that wins is timed
    again against "dense" alone (`confirmation_ms`) and ships only if it is still faster by
    the margin; `speed_check` says in one line what was decided.
    """

    onnx_path: str
    report_path: str
    lowering: str
    exporter: str
    opset: int
    dynamic_batch: bool
    batch: int
    threads: int | None
    align: int
    simplifier: str
    simplify_notes: list[str]
    parity: ParityReport
    layers: list[LayerLowering]
    settings: dict
    tool_version: str
    seconds: dict[str, float]
    network_plan: str = ""
    network_ms: dict[str, list[float]] = field(default_factory=dict)
    confirmation_ms: dict[str, list[float]] = field(default_factory=dict)
    speed_margin: float | None = None
    speed_check: str = ""

    @property
    def forms(self) -> dict[str, str]:
        """Layer name -> form shipped."""
        return {layer.name: layer.form for layer in self.layers}

    @property
    def dense_layers(self) -> list[str]:
        """Layers shipped as one ordinary conv: the original conv where `export_onnx` got the
        original model (see `lower.put_back_originals`), else the GDWS weights made dense."""
        return [layer.name for layer in self.layers if layer.form == "dense"]

    @property
    def macs(self) -> dict[str, int]:
        """MACs per image summed over the GDWS layers: original, GDWS, and as shipped."""
        shipped = sum(
            lay.macs_original if lay.form == "dense" else lay.macs_gdws for lay in self.layers
        )
        return {
            "original": sum(lay.macs_original for lay in self.layers),
            "gdws": sum(lay.macs_gdws for lay in self.layers),
            "shipped": shipped,
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["parity"] = self.parity.to_dict()
        data["macs"] = self.macs
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> ExportResult:
        data = {k: v for k, v in data.items() if k != "macs"}
        data["parity"] = ParityReport.from_dict(data["parity"])
        data["layers"] = [LayerLowering(**lay) for lay in data["layers"]]
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExportResult:
        return cls.from_dict(json.loads(Path(path).read_text()))
