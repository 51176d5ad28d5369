"""What `approximate` (and the baselines, in the same format) did: one `LayerReport` per conv
and an `ApproximationReport` over the network, with its Markdown table and JSON form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from torch import nn

from gdws_export.gdws.conv import conv_macs_per_pixel
from gdws_export.gdws.selection import count_params


class MacRatioJson:
    """For report dataclasses with `macs_before` and `macs_after` (fields or properties): the
    achieved MAC ratio, and the JSON form (the fields, then those three).

    Shared by the reports of `approximate`, `approximate_lowrank` and the baselines.
    """

    @property
    def achieved_mac_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["macs_before"] = self.macs_before
        data["macs_after"] = self.macs_after
        data["achieved_mac_ratio"] = self.achieved_mac_ratio
        return data

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


class PerLayerReport(MacRatioJson):
    """For report dataclasses with `layers` (each with `status`, `macs_before`, `macs_after`)
    and a `table()`: MACs summed over the layers the method was allowed to replace."""

    def allowed_total(self, field: str) -> int:
        """`field` (e.g. "macs_before") summed over the layers the method was allowed to
        replace: every layer but the skipped ones."""
        return sum(getattr(layer, field) for layer in self.layers if layer.status != "skipped")

    @property
    def macs_before(self) -> int:
        """MACs of the convs the method was allowed to replace, before."""
        return self.allowed_total("macs_before")

    @property
    def macs_after(self) -> int:
        """MACs of the same convs after (original convs kept count at full cost)."""
        return self.allowed_total("macs_after")

    def total_row(self, middle: str = "") -> str:
        """The table's last row: the MACs of the approximable convs before and after and the
        achieved ratio; `middle` holds the cells between them and the ratio."""
        return (
            f"| total (approximable convs) | | | | {self.macs_before:,} | {self.macs_after:,} "
            f"|{middle} ratio {self.achieved_mac_ratio:.3f} |"
        )

    def __str__(self) -> str:
        return self.table()


@dataclass
class ConvLayerReport:
    """The fields every per-layer report starts with: which conv, its shape, what became of
    it (`status`) and why (`reason`), its MACs and parameters before and after, and the
    (weighted) error its method traded."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    groups: int
    status: str
    reason: str = ""
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    weighted_error: float = 0.0

    @property
    def shape_text(self) -> str:
        """The conv's weight shape as a report table shows it: 'MxC/gxKhxKw'."""
        return (
            f"{self.out_channels}x{self.in_channels // self.groups}"
            f"x{self.kernel_size[0]}x{self.kernel_size[1]}"
        )


@dataclass
class LayerReport(ConvLayerReport):
    """What `approximate` did to one conv.

    `status` is "gdws" (replaced), "original" (GDWS would cost more, the conv was kept) or
    "skipped" (not approximable, see `reason`). MACs are per image when the input shape is
    known (`pixels` > 0), else per output pixel. With `time_ratio`, `cost_before` and
    `cost_after` are the layer's `LayerCost` before and after (predicted, in its unit).
    """

    kernels: int = 0
    full_rank_kernels: int = 0
    kernels_per_channel: list[int] = field(default_factory=list)
    pixels: int = 0
    cost_before: float | None = None
    cost_after: float | None = None

    @classmethod
    def for_conv(
        cls, name: str, conv: nn.Conv2d, pixels: int, *, reason: str = "", per_image: bool = True
    ) -> LayerReport:
        """The report of `conv` left as it is ("skipped" until its method says otherwise);
        `pixels` output pixels per image, or 1 with `per_image=False` (MACs per pixel)."""
        macs, params = conv_macs_per_pixel(conv) * pixels, count_params(conv)
        return cls(
            name=name, in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size), groups=conv.groups, status="skipped",
            reason=reason, pixels=pixels if per_image else 0,
            macs_before=macs, macs_after=macs, params_before=params, params_after=params,
        )  # fmt: skip


@dataclass
class ApproximationReport(PerLayerReport):
    """Per-layer report of `approximate`, with the settings that produced it."""

    beta: float | None
    mac_ratio: float | None
    input_shape: tuple[int, ...] | None
    weighted: bool
    layers: list[LayerReport]
    time_ratio: float | None = None
    max_layer_error: float | None = None  # the cap the budget respected (None: no cap)

    @property
    def replaced(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.status == "gdws"]

    @property
    def predicted_time_ratio(self) -> float | None:
        """With `time_ratio`: the approximable convs' predicted cost after over before."""
        if self.time_ratio is None:
            return None
        layers = [layer for layer in self.layers if layer.status != "skipped"]
        before = sum(layer.cost_before for layer in layers)
        return sum(layer.cost_after for layer in layers) / before if before else 1.0

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["predicted_time_ratio"] = self.predicted_time_ratio
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> ApproximationReport:
        layers = [
            LayerReport(**{**layer, "kernel_size": tuple(layer["kernel_size"])})
            for layer in data["layers"]
        ]
        shape = data["input_shape"]
        return cls(
            beta=data["beta"],
            mac_ratio=data["mac_ratio"],
            input_shape=tuple(shape) if shape is not None else None,
            weighted=data["weighted"],
            layers=layers,
            time_ratio=data.get("time_ratio"),
            max_layer_error=data.get("max_layer_error"),
        )

    def table(self) -> str:
        """A Markdown table, one row per conv (with `time_ratio`, the predicted costs too)."""
        unit = "MACs" if self.input_shape else "MACs/pixel"
        timed = self.time_ratio is not None
        cost_head = " cost before | cost after |" if timed else ""
        rows = [
            f"| layer | shape | status | kernels | {unit} before | {unit} after |{cost_head}"
            " weighted error |",
            "|---|---|---|---|---|---|" + ("---|---|" if timed else "") + "---|",
        ]
        for layer in self.layers:
            shape = layer.shape_text
            kernels = f"{layer.kernels}/{layer.full_rank_kernels}" if layer.kernels else ""
            status = layer.status + (f" ({layer.reason})" if layer.reason else "")
            costs = ""
            if timed:
                costs = (
                    " "
                    + " | ".join(
                        "" if c is None else f"{c:.4g}"
                        for c in (layer.cost_before, layer.cost_after)
                    )
                    + " |"
                )
            rows.append(
                f"| {layer.name} | {shape} | {status} | {kernels} | {layer.macs_before:,} "
                f"| {layer.macs_after:,} |{costs} {layer.weighted_error:.4g} |"
            )
        ratio = f" ratio {self.predicted_time_ratio:.3f} | |" if timed else ""
        rows.append(self.total_row(ratio))
        return "\n".join(rows)
