"""What `approximate_lowrank` did, layer by layer: the shape of `ApproximationReport`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gdws_export.gdws.approximation_report import ConvLayerReport, PerLayerReport


@dataclass
class LowRankLayerReport(ConvLayerReport):
    """What `approximate_lowrank` did to one conv.

    `status` is "tucker2" or "lowrank" (replaced by that form), "original" (the budget kept
    the conv) or "skipped" (not approximable, see `reason`). `ranks` is (r_out, r_in) for
    Tucker-2, (r,) for the two-factor form, empty otherwise; `max_ranks` the ranks of that
    form that reproduce the weight. MACs are per image. `weighted_error` is the (alpha-
    weighted) squared Frobenius error the budget traded, `relative_error` the plain
    ||W - W_hat||^2 / ||W||^2 (the fraction of weight energy dropped).
    """

    ranks: list[int] = field(default_factory=list)
    max_ranks: list[int] = field(default_factory=list)
    in_pixels: int = 0
    out_pixels: int = 0
    relative_error: float = 0.0


@dataclass
class LowRankReport(PerLayerReport):
    """Per-layer report of `approximate_lowrank`, with the settings that produced it.

    `solver` is the allocator that chose the ranks ("exact" or "greedy", see
    `gdws_export.lowrank.allocation`); None when no layer was approximable.
    """

    mac_ratio: float
    method: str
    input_shape: tuple[int, ...]
    weighted: bool
    layers: list[LowRankLayerReport]
    solver: str | None = None

    @property
    def replaced(self) -> list[LowRankLayerReport]:
        return [layer for layer in self.layers if layer.status in ("tucker2", "lowrank")]

    @classmethod
    def from_dict(cls, data: Mapping) -> LowRankReport:
        layers = [
            LowRankLayerReport(**{**layer, "kernel_size": tuple(layer["kernel_size"])})
            for layer in data["layers"]
        ]
        return cls(
            mac_ratio=data["mac_ratio"],
            method=data["method"],
            input_shape=tuple(data["input_shape"]),
            weighted=data["weighted"],
            layers=layers,
            solver=data.get("solver"),
        )

    def table(self) -> str:
        """A Markdown table, one row per conv."""
        rows = [
            "| layer | shape | status | ranks | MACs before | MACs after | params after "
            "| relative error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            shape = layer.shape_text
            ranks = ""
            if layer.ranks:
                ranks = f"{tuple(layer.ranks)}/{tuple(layer.max_ranks)}".replace(",)", ")")
            status = layer.status + (f" ({layer.reason})" if layer.reason else "")
            rows.append(
                f"| {layer.name} | {shape} | {status} | {ranks} | {layer.macs_before:,} "
                f"| {layer.macs_after:,} | {layer.params_after:,} | {layer.relative_error:.4g} |"
            )
        rows.append(self.total_row(" |"))
        return "\n".join(rows)
