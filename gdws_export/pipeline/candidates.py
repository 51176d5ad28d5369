"""Candidates: the model built as the export ships it (alphas of one sensitivity measure,
the method's replacement of modules (`gdws_export.methods`), the 1x1 refit), the choice
between measures on held-out images, and the calibration data they are built from."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.activations import activation_gains, input_moments, relative_gains
from gdws_export.gdws.calibration import calibrated_gains
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.refit import RefitReport, refit_pointwise
from gdws_export.gdws.sensitivity import (
    load_alphas,
    load_input_moments,
    noise_gains,
)
from gdws_export.harness.measure_choice import (
    AUTO_MEASURES,
    MIN_HELD_OUT,
    SELECTION_STEPS,
    choose_measure,
    selection_attack,
)
from gdws_export.methods import Budget, MethodReport, get_method
from gdws_export.pipeline.config import ExportConfig
from gdws_export.pipeline.model import (
    match_alpha_names,
    match_layer_patterns,
)
from gdws_export.pipeline.stages import Alphas, ExportState, attack_batch, parity_inputs


@dataclass
class Candidate:
    """The model the method built with one measure's alphas (refit when asked)."""

    alphas: Alphas
    model: nn.Module
    approximation: MethodReport
    refit: RefitReport | None
    seconds: float


def build_candidate(
    cfg: ExportConfig, measure: str, state: ExportState, costs, clock, show_bars
) -> Candidate:
    """The model `cfg.method` builds with `measure`'s alphas, refit when the config says so."""
    start = time.perf_counter()
    if measure not in state.alphas_by_measure:
        state.alphas_by_measure[measure] = compute_alphas(cfg, measure, state, clock, show_bars)
    alphas = state.alphas_by_measure[measure]
    which = f" ({measure} alphas)" if cfg.sensitivity == "auto" else ""
    if cfg.searches():
        which = f" (MAC ratio {cfg.mac_ratio:g}{', ' + measure + ' alphas' if which else ''})"
    method = get_method(cfg.method)
    budget = Budget(mac_ratio=cfg.mac_ratio, beta=cfg.beta, time_ratio=cfg.time_ratio,
                    max_layer_error=cfg.max_layer_error)  # fmt: skip
    with clock("approximate", which):
        model, approx = method.apply(
            state.model, budget, alphas=alphas.alphas, input_moments=alphas.moments,
            layer_costs=costs, input_shape=state.shape,
            exclude=match_layer_patterns(cfg.exclude, state.model),
        )  # fmt: skip
    refit = None
    if cfg.refit and any(isinstance(m, GDWSConv2d) for m in model.modules()):
        x, y = state.data
        with clock("refit", f"{which} ({len(x)} samples, clean and PGD)"):
            model, refit = refit_pointwise(
                model, state.model, (x, y), eps=cfg.alpha_eps, step_size=cfg.alpha_eps / 4,
                samples=len(x), seed=cfg.seed, batch_size=state.loaded.fixed_batch or 64,
            )  # fmt: skip
    return Candidate(alphas, model, approx, refit, time.perf_counter() - start)


def candidate_measures(cfg: ExportConfig, state: ExportState, report) -> tuple[str, ...]:
    """The measures to build models with: all of `--sensitivity auto`'s candidates only when
    enough held-out images can judge them; else just the one that ships (the first), with a
    warning, since a candidate that cannot be judged would be built for nothing."""
    if cfg.sensitivity != "auto":
        return (cfg.sensitivity,)
    held_out = len(state.held_out[0])
    if held_out >= MIN_HELD_OUT:
        return AUTO_MEASURES
    first = AUTO_MEASURES[0]
    report.warnings.append(
        f"--sensitivity auto: --calib has {held_out} images after the first --calib-samples "
        f"({cfg.calib_samples}), too few to judge the measures (at least {MIN_HELD_OUT}); "
        f"built and shipped {first} alone, the first candidate: pass more images or a smaller "
        "--calib-samples"
    )
    return (first,)


def choose_candidate_measure(
    cfg: ExportConfig, built: dict[str, Candidate], state: ExportState, report, clock
) -> str:
    """`--sensitivity auto`: the measure whose model is most robust on the held-out images."""
    x, y = state.held_out
    with clock("choose", f" ({len(x)} images, PGD-{SELECTION_STEPS})"):
        choice = choose_measure(
            {m: c.model for m, c in built.items()}, x, y,
            selection_attack(cfg.alpha_eps, seed=cfg.seed),
            build_seconds={m: c.seconds for m, c in built.items()},
            batch_size=attack_batch(state),
        )  # fmt: skip
    report.sensitivity_choice = choice.to_dict()
    return choice.chosen


def compute_alphas(
    cfg: ExportConfig, measure: str, state: ExportState, clock, show_bars: bool
) -> Alphas:
    """`measure`'s alphas (or the --alphas file's), with where they came from."""
    if cfg.alphas is not None:
        alphas = match_alpha_names(load_alphas(cfg.alphas), state.model, cfg.alphas)
        moments = load_input_moments(cfg.alphas)
        if moments is not None:
            moments = match_alpha_names(moments, state.model, cfg.alphas)
            return Alphas(measure, alphas, moments, False, f"file {cfg.alphas} (activation-aware)")
        return Alphas(measure, alphas, None, False, f"file {cfg.alphas}")
    chosen = " (chosen by --sensitivity auto)" if cfg.sensitivity == "auto" else ""
    if measure == "none":
        how = "chosen by --sensitivity auto" if chosen else "--sensitivity none"
        return Alphas(measure, None, None, False, f"none (unweighted, {how})")
    if measure == "relative":  # from the weights alone: no data needed
        with clock("alphas", " (relative: per-layer 1/||W||^2)"):
            alphas = relative_gains(state.model)
        source = f"relative (per-layer 1/||W||^2 of the weights, no data){chosen}"
        return Alphas(measure, alphas, None, True, source)
    if state.data is None:
        return Alphas("none", None, None, False,
                       f"none (unweighted; --sensitivity {measure} needs --calib data, or pass "
                       "--alphas)")  # fmt: skip
    x, y = state.data
    common = dict(samples=len(x), eps=cfg.alpha_eps, step_size=cfg.alpha_eps / 4, seed=cfg.seed,
                  batch_size=state.loaded.fixed_batch or 64)  # fmt: skip
    moments = None
    with clock("alphas", f" ({measure}, PGD on {len(x)} calibration samples)"):
        if measure == "activation":
            moments = input_moments(state.model, (x, y), **common)
            alphas = activation_gains(state.model, moments)
        elif measure == "calibrated":
            alphas = calibrated_gains(state.model, (x, y), **common)
        else:
            alphas = noise_gains(state.model, (x, y), progress=show_bars, **common)
    source = f"{measure}, computed on {cfg.calib} ({len(x)} samples, PGD eps {cfg.alpha_eps:.4g})"
    return Alphas(measure, alphas, moments, True, source + chosen)


def calibration_data(cfg: ExportConfig, shape, classes: int):
    """(calibration images, labels) and, for sensitivity "auto", the held-out ones after
    them (else None)."""
    from gdws_export.harness.data import load_dataset

    held_out = cfg.held_out_samples if cfg.holds_out() else 0
    limit = cfg.calib_samples + held_out
    x, y = load_dataset(cfg.calib, split="train", limit=limit, input_shape=shape)
    if len(y) and int(y.max()) >= classes:
        raise InvalidInputError(
            f"--calib {cfg.calib} has label {int(y.max())} but the model has {classes} outputs; "
            "pass data of the model's task"
        )
    n = cfg.calib_samples
    if not held_out:
        return (x, y), None
    return (x[:n], y[:n]), (x[n:], y[n:])


def approximation_figures(model, gdws_model, state: ExportState, cfg) -> dict:
    """How far the GDWS model's logits are from the original's (informative, never fails),
    and on which inputs: random ones (no --calib) cannot judge top-1 agreement."""
    from gdws_export.pipeline.engine import compare

    x = torch.from_numpy(parity_inputs(state, cfg.seed))
    batch = state.loaded.fixed_batch
    with torch.no_grad():
        chunks = [x[i : i + 1] for i in range(len(x))] if batch else [x]
        reference = torch.cat([model(c) for c in chunks]).numpy()
        approximated = torch.cat([gdws_model(c) for c in chunks]).numpy()
    inputs = "random" if state.data is None else "calibration"
    return {**compare(reference, approximated, tolerance=None), "inputs": inputs}
