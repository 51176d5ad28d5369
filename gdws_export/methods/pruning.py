"""`l1-prune`: L1-norm filter pruning without fine-tuning (`baselines.prune_filters`): every
prunable conv loses the same fraction of its lowest-L1 filters, the smallest fraction that
brings all the convs' MACs within `mac_ratio`.

Pruning a conv's filters also cuts the input channels of the conv reading them (and the
BatchNorm between), so layers are not independent: the search does not try keeping single
layers exact. The report has one row per conv whose weights changed ("pruned": its filters,
its input channels or both) and per conv left alone; `weighted_error` is the fraction of the
conv's weight energy (squared L2) in the filters it lost. Alphas do not apply (the L1 norm
ranks the filters); `--exclude` keeps a conv's filters and input channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gdws_export.baselines.pruning import PruneSite, find_prune_sites, prune_filters
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.approximation_report import ConvLayerReport, PerLayerReport
from gdws_export.gdws.conv import conv_macs_per_pixel
from gdws_export.gdws.selection import output_sizes, resolve_input_shape
from gdws_export.methods.base import (
    Budget,
    Method,
    MethodConfig,
    MethodInputs,
    Site,
    check_reached,
)
from gdws_export.methods.registry import register_method


@dataclass(frozen=True)
class L1PruneConfig(MethodConfig):
    """`skip_first` keeps the first conv whole; `multiple_of` rounds each pruned conv's
    filters down to a multiple of it (ONNX Runtime's blocked layout, `prune_filters`)."""

    skip_first: bool = True
    multiple_of: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.multiple_of
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"multiple_of must be a positive integer, got {value!r}")


@dataclass
class PrunedConvReport(ConvLayerReport):
    """One conv under `l1-prune`: filters and input channels before and after (the shape
    fields are before)."""

    filters_after: int = 0
    in_channels_after: int = 0


@dataclass
class FilterPruningReport(PerLayerReport):
    """Per-conv report of `l1-prune`: the budget, the common fraction of filters removed."""

    mac_ratio: float
    fraction: float
    input_shape: tuple[int, ...]
    layers: list[PrunedConvReport]

    def table(self) -> str:
        """A Markdown table, one row per conv."""
        rows = ["| layer | shape | status | filters | MACs before | MACs after | params after "
                "| dropped energy |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for layer in self.layers:
            status = layer.status + (f" ({layer.reason})" if layer.reason else "")
            rows.append(
                f"| {layer.name} | {layer.shape_text} | {status} "
                f"| {layer.filters_after}/{layer.out_channels} | {layer.macs_before:,} "
                f"| {layer.macs_after:,} | {layer.params_after:,} | {layer.weighted_error:.4g} |"
            )
        rows.append(self.total_row(" |"))
        return "\n".join(rows)


@register_method
class L1PruneMethod(Method):
    """L1-norm filter pruning (Li et al. 2017) without fine-tuning (module docstring)."""

    name = "l1-prune"
    title = "L1 filter pruning"
    config_type = L1PruneConfig
    layers_independent = False
    layer_kind = "prunable conv"

    def find_sites(self, model: nn.Module, exclude: Sequence[str] = ()) -> list[Site]:
        sites, reasons = find_prune_sites(model, exclude=exclude)
        producers = {s.producer for s in sites}
        return [Site(n, m, None if n in producers else reasons.get(n, "not prunable"))
                for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # fmt: skip

    def none_replaceable(self, sites: list[Site]) -> str:
        return "no conv feeds exactly one other conv through per-channel ops"

    def replace(
        self, model: nn.Module, config: L1PruneConfig, budget: Budget, inputs: MethodInputs
    ) -> tuple[nn.Module, FilterPruningReport]:
        shape = resolve_input_shape(model, inputs.input_shape, needed_by="l1-prune")
        options = dict(input_shape=shape, skip_first=config.skip_first,
                       multiple_of=config.multiple_of, exclude=inputs.exclude or None)  # fmt: skip
        try:
            pruned, report = prune_filters(model, mac_ratio=budget.mac_ratio, **options)
        except UnsupportedModelError:
            _, deepest = prune_filters(model, fraction=1 - 1e-9, **options)
            check_reached(self.name, budget.mac_ratio, deepest.achieved_mac_ratio,
                          "one filter in every prunable conv")  # fmt: skip
            raise
        sites, reasons = find_prune_sites(model, skip_first=config.skip_first,
                                          exclude=inputs.exclude or None)  # fmt: skip
        kept = {layer.name: layer.kept for layer in report.layers}
        layers = _conv_reports(model, pruned, sites, reasons, kept, shape)
        return pruned, FilterPruningReport(budget.mac_ratio, report.fraction, shape, layers)


def _conv_reports(
    model: nn.Module, pruned: nn.Module, sites: list[PruneSite], reasons: dict, kept: dict, shape
) -> list[PrunedConvReport]:
    """One report per conv of `model`: what pruning did to it in `pruned` (`kept`: the
    filters each pruned conv kept, by original index)."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pixels = {n: h * w for n, (h, w) in output_sizes(model, list(convs), shape).items()}
    by_producer = {s.producer: s for s in sites}
    reads = {s.consumer: s.producer for s in sites}
    reports = []
    for name, conv in convs.items():
        new = pruned.get_submodule(name)
        site = by_producer.get(name)
        norms = site.batchnorms if site else ()
        before = _params(conv) + sum(_params(model.get_submodule(b)) for b in norms)
        after = _params(new) + sum(_params(pruned.get_submodule(b)) for b in norms)
        changed = tuple(new.weight.shape) != tuple(conv.weight.shape)
        status = "pruned" if changed else ("original" if site or name in reads else "skipped")
        filter_energy = conv.weight.detach().double().pow(2).flatten(1).sum(1)
        energy = float(filter_energy.sum())
        lost = energy - float(filter_energy[kept[name]].sum()) if name in kept else 0.0
        report = PrunedConvReport(
            name=name, in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size), groups=conv.groups, status=status,
            reason=_reason(name, conv, new, reads, reasons, status),
            macs_before=conv_macs_per_pixel(conv) * pixels.get(name, 0),
            macs_after=conv_macs_per_pixel(new) * pixels.get(name, 0),
            params_before=before, params_after=after,
            weighted_error=lost / energy if energy > 0 else 0.0,
            filters_after=new.out_channels, in_channels_after=new.in_channels,
        )  # fmt: skip
        reports.append(report)
    return reports


def _reason(name, conv, new, reads, reasons, status) -> str:
    if status == "skipped":
        return reasons.get(name, "")
    parts = []
    if new.out_channels != conv.out_channels:
        parts.append(f"{new.out_channels}/{conv.out_channels} filters kept")
    if new.in_channels != conv.in_channels:
        parts.append(f"input channels follow {reads[name]}")
    return "; ".join(parts) or "the budget removed no filter"


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
