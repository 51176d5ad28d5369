"""The models the paper table compares, built from one checkpoint: the original, GDWS under each
sensitivity measure, and the two baselines, each at the table's MAC ratios.

Sensitivity measures (the alphas `approximate` weighs kernels by):

- `none`: unweighted GDWS (alpha = 1), plain squared Frobenius error in every layer;
- `paper`: the paper's noise gains (`noise_gains`, first-order output-margin noise model);
- `calibrated`: `calibrated_gains`: ones within a layer, each layer's scale measured as KL
  divergence per unit of error on adversarial inputs;
- `relative`: `relative_gains`, the project's default: ones within a layer, each layer scaled
  by 1 / ||W_l||_F^2, so the global budget trades relative (not absolute) weight error between
  layers: no data, no attack;
- `activation`: activation-aware GDWS (`input_moments` + `activation_gains`): each channel's
  SVD in the metric of its input patches (clean and PGD images), so what is dropped is least
  expected output error, and layers traded by relative output error.

Budgets: every measure above spends a MAC budget (`mac_ratio`). `gdws-time` spends a time
budget instead (`time_ratio`, with the primary measure: the first of `PRIMARY` computed):
each approximable conv is timed on ONNX
Runtime at the table's batch (`measure_layer_costs`), and kernels go where they remove the most
error per millisecond, so layers whose GDWS form is not faster keep their conv. Its ratios are
fractions of the convs' time, not of their MACs; the MAC-ratio verdicts leave it out and the
matched-speed ones include it.

`+refit` rows: the same GDWS model with every 1x1 conv refit by least squares to the original
conv's outputs on the calibration images, clean and PGD (`refit_pointwise`): same kernels,
MACs and lowering, less output error where the errors of earlier layers pile up.

Baselines, at the same MAC ratios:

- `dws`: plain depthwise-separable convs (g_c = 1) from the same SVD, whole layers converted
  in order of least error per MAC saved (primary measure) until the ratio is met;
- `l1-prune`: L1-norm filter pruning without fine-tuning (Li et al. 2017), the same fraction
  of filters removed from every prunable conv (the first conv included, as in Li et al.'s
  VGG-16), matched to the MACs of the primary measure's GDWS model at the same ratio (all convs
  counted), each pruned width rounded down to a multiple of 8 (`PRUNE_MULTIPLE`): ONNX Runtime
  runs convs with other channel counts outside its blocked NCHWc layout (a 3x3 conv with 29
  channels took 2.5x the time per MAC of one with 32 here), and a deployed pruned model would
  round its widths;
- `in-prune`: input-channel pruning without fine-tuning (`prune_input_channels`): each
  approximable conv reads only its strongest input channels (by share of the layer's weight
  energy, chosen globally) until those convs keep the ratio of their MACs, as GDWS's ratio
  counts them. It is GDWS's zero-kernel channels without the low-rank part.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from gdws_export import (
    activation_gains,
    approximate,
    calibrated_gains,
    input_moments,
    noise_gains,
    refit_pointwise,
    relative_gains,
)
from gdws_export.baselines import depthwise_separable, prune_filters, prune_input_channels
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.decomposition import channel_svd
from gdws_export.gdws.selection import count_macs, find_convs
from gdws_export.harness.measure_choice import AUTO_MEASURES, choose_measure, selection_attack

SENSITIVITIES = ("none", "paper", "calibrated", "relative", "activation")
PRIMARY = ("relative", "activation", "calibrated")  # gdws-time, dws: the first computed
BASELINES = ("dws", "l1-prune", "in-prune")
ORIGINAL = "original"
PRUNE_MULTIPLE = 8


def parse_variant(name: str) -> tuple[str, bool, float]:
    """(measure, refit, MAC ratio) of a GDWS row name such as "gdws-calibrated@0.25" or
    "gdws-relative+refit@0.25"."""
    match = re.fullmatch(r"gdws-([a-z]+)(\+refit)?@([0-9.]+)", name)
    if match is None or match.group(1) not in SENSITIVITIES:
        raise ValueError(
            f"variant {name!r} is not gdws-<measure>[+refit]@<mac ratio> with a measure of "
            f"{SENSITIVITIES}"
        )
    return match.group(1), match.group(2) is not None, float(match.group(3))


@dataclass
class Variant:
    """One model of the table before export: what it is, how long it took to make."""

    name: str
    method: str  # "original", "gdws", "dws", "l1-prune" or "in-prune"
    sensitivity: str = ""
    target_ratio: float | None = None
    model: nn.Module | None = None
    seconds: float = 0.0  # approximate / prune (the sensitivity's own time is per checkpoint)
    conv_mac_ratio: float = 1.0  # of the convs the method may change, before any revert
    details: dict = field(default_factory=dict)
    budget: str = "mac"  # what target_ratio is a fraction of: "mac" or "time"


@dataclass
class Sensitivity:
    """One measure's output: alphas (None: unweighted), input moments (activation-aware only)
    and the seconds it took."""

    alphas: dict | None
    moments: dict | None = None
    seconds: float = 0.0


def compute_sensitivities(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    names: tuple[str, ...],
    *,
    eps: float,
    samples: int,
) -> dict[str, Sensitivity]:
    """{measure: Sensitivity} on the first `samples` of `data` (PGD-10, step eps / 4)."""
    x, y = data[0][:samples], data[1][:samples]
    common = dict(eps=eps, step_size=eps / 4, samples=len(x), seed=0)

    def activation() -> Sensitivity:
        moments = input_moments(model, (x, y), batch_size=128, **common)
        return Sensitivity(activation_gains(model, moments), moments)

    makers = {
        "none": lambda: Sensitivity(None),
        "paper": lambda: Sensitivity(noise_gains(model, (x, y), batch_size=64, **common)),
        "calibrated": lambda: Sensitivity(
            calibrated_gains(model, (x, y), batch_size=128, **common)
        ),  # fmt: skip
        "relative": lambda: Sensitivity(relative_gains(model)),
        "activation": activation,
    }
    result = {}
    for name in names:
        start = time.perf_counter()
        result[name] = makers[name]()
        result[name].seconds = time.perf_counter() - start
    return result


def primary_measure(sensitivities: dict[str, Sensitivity]) -> str:
    """The measure gdws-time and dws use: the first of `PRIMARY` computed, else 'none'."""
    return next((m for m in PRIMARY if m in sensitivities), "none")


def build_variants(
    model: nn.Module,
    ratios: tuple[float, ...],
    sensitivities: dict[str, Sensitivity],
    *,
    baselines: tuple[str, ...] = BASELINES,
    comparison_ratios: tuple[float, ...] | None = None,
    time_ratios: tuple[float, ...] = (),
    layer_costs: dict | None = None,
    refit: tuple[str, ...] = (),
    refit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 0.1,
    exclude: tuple[str, ...] = (),
) -> list[Variant]:
    """The original, GDWS under every measure at every ratio (and, for the measures in
    `refit`, the same model with its 1x1 convs refit on `refit_data`: `gdws-<measure>+refit`),
    `gdws-time` at `time_ratios` (needs `layer_costs`; the primary measure), then the
    baselines.

    At ratios not in `comparison_ratios` (None: every ratio is one) only the refit rows are
    built: the rows the export ships. The comparisons (each measure without the refit against
    the others and the baselines) run at `comparison_ratios`.

    `exclude`: convs every GDWS and dws row keeps exact (`approximate`'s); their budgets cover
    the other convs. The pruning baselines prune every conv: l1-prune is matched to the GDWS
    model's whole-model MACs, in-prune keeps `ratio` of all approximable convs' MACs."""
    keep = {"exclude": exclude or None}
    variants = [Variant(ORIGINAL, "original", model=model)]
    shape = tuple(model.input_shape)
    total = count_macs(model, shape)
    primary = primary_measure(sensitivities)
    if comparison_ratios is None:
        comparison_ratios = tuple(ratios)
    matched: dict[float, float] = {}  # ratio -> whole-model MAC ratio of the primary's GDWS
    for ratio in ratios:
        for measure, sens in sensitivities.items():
            shown = ratio in comparison_ratios
            if not shown and measure not in refit:
                continue
            start = time.perf_counter()
            gdws, report = approximate(model, mac_ratio=ratio, alphas=sens.alphas,
                                       input_moments=sens.moments, input_shape=shape,
                                       **keep)  # fmt: skip
            seconds = time.perf_counter() - start
            if shown:
                variants.append(
                    Variant(f"gdws-{measure}@{ratio:g}", "gdws", measure, ratio, gdws.eval(),
                            seconds, report.achieved_mac_ratio,
                            {"kernels": {lay.name: lay.kernels for lay in report.replaced}})
                )  # fmt: skip
            if measure == primary or ratio not in matched:
                matched[ratio] = count_macs(gdws, shape) / total
            if measure in refit and report.replaced:
                start = time.perf_counter()
                refitted, _ = refit_pointwise(gdws, model, refit_data, eps=eps,
                                              step_size=eps / 4, samples=len(refit_data[0]))  # fmt: skip
                variants.append(
                    Variant(f"gdws-{measure}+refit@{ratio:g}", "gdws", measure, ratio,
                            refitted.eval(), seconds + time.perf_counter() - start,
                            report.achieved_mac_ratio,
                            {"kernels": {lay.name: lay.kernels for lay in report.replaced},
                             "refit": True})
                )  # fmt: skip
    chosen = sensitivities.get(primary, Sensitivity(None))
    alphas, moments = chosen.alphas, chosen.moments
    for ratio in time_ratios:
        start = time.perf_counter()
        try:
            gdws, report = approximate(model, time_ratio=ratio, layer_costs=layer_costs,
                                       alphas=alphas, input_moments=moments,
                                       input_shape=shape, **keep)  # fmt: skip
        except InvalidInputError as exc:  # below the cheapest choice of every layer
            print(f"  gdws-time@{ratio:g} left out: {exc}", flush=True)
            continue
        variants.append(
            Variant(f"gdws-time@{ratio:g}", "gdws", primary, ratio,
                    gdws.eval(), time.perf_counter() - start, report.achieved_mac_ratio,
                    {"kernels": {lay.name: lay.kernels for lay in report.replaced},
                     "predicted_time_ratio": report.predicted_time_ratio}, budget="time")
        )  # fmt: skip
    for ratio in comparison_ratios:
        if "dws" in baselines:
            start = time.perf_counter()
            dws, report = depthwise_separable(model, mac_ratio=ratio, alphas=alphas,
                                              input_moments=moments, input_shape=shape,
                                              **keep)  # fmt: skip
            variants.append(
                Variant(f"dws@{ratio:g}", "dws", primary, ratio,
                        dws.eval(), time.perf_counter() - start, report.achieved_mac_ratio,
                        {"converted": [lay.name for lay in report.replaced]})
            )  # fmt: skip
        if "l1-prune" in baselines:
            target = matched.get(ratio, ratio)
            start = time.perf_counter()
            multiple = PRUNE_MULTIPLE
            try:
                pruned, report = prune_filters(model, mac_ratio=target, input_shape=shape,
                                               skip_first=False, multiple_of=multiple)  # fmt: skip
            except UnsupportedModelError:  # widths too small to round (tiny test nets)
                multiple = 1
                pruned, report = prune_filters(model, mac_ratio=target, input_shape=shape,
                                               skip_first=False)  # fmt: skip
            variants.append(
                Variant(f"l1-prune@{ratio:g}", "l1-prune", "", ratio, pruned.eval(),
                        time.perf_counter() - start, report.achieved_mac_ratio,
                        {"fraction": report.fraction, "matched_whole_model_ratio": target,
                         "multiple_of": multiple})
            )  # fmt: skip
        if "in-prune" in baselines:
            start = time.perf_counter()
            pruned, report = prune_input_channels(model, mac_ratio=ratio, input_shape=shape)
            variants.append(
                Variant(f"in-prune@{ratio:g}", "in-prune", "", ratio, pruned,
                        time.perf_counter() - start, report.achieved_mac_ratio,
                        {"kept_channels": report.kept})
            )  # fmt: skip
    return variants


def export_default_choices(
    variants: list[Variant],
    ratios: tuple[float, ...],
    held_out: tuple[torch.Tensor, torch.Tensor],
    eps: float,
) -> list[dict]:
    """Per MAC ratio, the `+refit` row `gdws-export`'s default (`--sensitivity auto`) would
    ship: its candidates' refit rows (`AUTO_MEASURES`) judged as the export judges them, on
    held-out training images (`choose_measure`), before any lowering. Ratios without every
    candidate's refit row are left out."""
    by_name = {v.name: v for v in variants}
    choices = []
    for ratio in ratios:
        names = {m: f"gdws-{m}+refit@{ratio:g}" for m in AUTO_MEASURES}
        if not all(n in by_name for n in names.values()):
            continue
        choice = choose_measure({m: by_name[n].model for m, n in names.items()}, *held_out,
                                selection_attack(eps))  # fmt: skip
        choices.append({"ratio": ratio, "variant": names[choice.chosen],
                        "choice": choice.to_dict()})  # fmt: skip
    return choices


def spectrum_energy(model: nn.Module, top: tuple[int, ...] = (1, 2, 3)) -> list[dict]:
    """Per approximable layer: mean over input channels of the share of the channel's squared
    weight in its top-k singular values (how much a channel keeps with k GDWS kernels)."""
    rows = []
    for site in find_convs(model):
        if site.skip_reason is not None:
            continue
        s2 = channel_svd(site.conv.weight, site.conv.groups).s ** 2
        share = s2.cumsum(dim=1) / s2.sum(dim=1, keepdim=True).clamp_min(1e-30)
        conv = site.conv
        rows.append({
            "layer": site.name,
            "shape": f"{conv.out_channels}x{conv.in_channels}x{conv.kernel_size[0]}x{conv.kernel_size[1]}",
            "rank": int(s2.shape[1]),
            **{f"top{k}": float(share[:, min(k, s2.shape[1]) - 1].mean()) for k in top},
        })  # fmt: skip
    return rows
