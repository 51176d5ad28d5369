"""Layer-calibrated sensitivities: alphas whose scale across layers is measured, not modelled.

Within a layer, any alpha (all ones, or the paper's noise gains) ranks channels and triplets.
Across layers, a global MAC budget (`approximate(mac_ratio=...)`) also needs the alphas of
different layers to be in the same units: a unit of weighted error in one layer must cost the
model about as much as a unit in another. The paper's first-order noise model does not give
that reliably (on adversarially trained nets it starves whole layers).

`calibrated_gains` measures it. For every approximable layer alone, it truncates the layer at a
few error levels (LEGO with beta = 5, 10 and 20 % of the layer's total weighted energy), runs
the model on adversarial examples of the original model, and records the KL divergence of the
output distribution from the original's. KL is >= 0, smooth and second order in the output
change, so it grows about linearly with the weighted error; the fitted slope
lambda_l = sum KL / sum error is the layer's scale, and the returned alphas are
lambda_l * base alpha. A unit of calibrated weighted error then means about the same increase
of KL on adversarial inputs in every layer.

Sensitivities must be >= 0 (`check_alpha` refuses others), so the KL is summed in a form whose
every term is >= 0 (`_kl`): the textbook sum of p * (log p - log q) rounded to -2.6e-21 on a
confident SVHN CNN, which made a negative alpha. A layer whose truncations moved no output at
all (KL exactly 0: the model is too confident on these inputs for float64 to see a change) is
not free to cut: it gets the smallest scale measured on another layer, and when no layer moved,
every layer keeps its base alphas (scale 1), i.e. no calibration across layers.

Cost: one PGD pass over the samples, then (layers x 3) forward passes: far less than one
`noise_gains` run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.attacks.config import CalibrationConfig
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.decomposition import (
    channel_svd,
    check_alpha,
    error_values,
    lego,
    weighted_error,
)
from gdws_export.gdws.inputs import CalibrationData, approximable_sites, calibration_images
from gdws_export.gdws.selection import replace_module

ERROR_FRACTIONS = (0.05, 0.1, 0.2)


def calibrated_gains(
    model: nn.Module,
    data: CalibrationData,
    *,
    calibration: CalibrationConfig | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    fractions: Sequence[float] = ERROR_FRACTIONS,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **settings: Any,
) -> dict[str, torch.Tensor]:
    """Alphas scaled per layer by the measured output change on adversarial inputs.

    Args:
        model: a classifier taking [0, 1] images; evaluated in eval mode (mode restored).
        data: (images, labels) tensors or an iterable of such batches; the first `samples`.
        calibration: the samples and the PGD attack making the inputs (attack=None: clean
            inputs). Defaults to `CalibrationConfig()`.
        base: per-channel alphas within each layer (e.g. from `noise_gains`); None means ones.
        fractions: error levels, as fractions of each layer's total weighted energy.
        skip_first, include, exclude: which convs (as in `approximate`).
        **settings: any `CalibrationConfig` field, overriding `calibration`'s.

    Returns:
        {layer name: (C,) float64 alphas}, for `approximate(alphas=...)`.
    """
    config = CalibrationConfig.resolve(calibration, **settings)
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise InvalidInputError(f"fractions must lie in (0, 1), got {list(fractions)}")
    sites = approximable_sites(model, skip_first, include, exclude)
    batch_size = config.batch_size
    was_training = model.training
    model.eval()
    try:
        inputs = calibration_images(model, data, config)
        reference = _log_probs(model, inputs, batch_size)
        scales: dict[str, float] = {}
        bases: dict[str, torch.Tensor] = {}
        for site in sites:
            given = None if base is None else base.get(site.name)
            alpha = check_alpha(given, site.conv.in_channels, site.name)
            svd = channel_svd(site.conv.weight, site.conv.groups)
            values = error_values(svd, alpha)
            total = float(values.sum())
            kl_sum = error_sum = 0.0
            for fraction in fractions:
                counts = lego(values, fraction * total)
                error = weighted_error(values, counts)
                if error <= 0:
                    continue
                # As a dense conv: the same function, at the original conv's speed.
                layer = GDWSConv2d._build(site.conv, svd, counts, error).to_dense().eval()
                replace_module(model, site.name, layer)
                try:
                    kl_sum += _kl(reference, _log_probs(model, inputs, batch_size))
                finally:
                    replace_module(model, site.name, site.conv)
                error_sum += error
            scales[site.name] = kl_sum / error_sum if error_sum > 0 else 0.0
            bases[site.name] = alpha
    finally:
        model.train(was_training)
    return {name: bases[name] * scale for name, scale in _unmeasured_scales(scales).items()}


def _unmeasured_scales(scales: dict[str, float]) -> dict[str, float]:
    """`scales` with each 0 (no output change measured) raised to the smallest measured one;
    all ones when none was measured (see the module docstring)."""
    measured = [s for s in scales.values() if s > 0]
    if not measured:
        return dict.fromkeys(scales, 1.0)
    return {name: s if s > 0 else min(measured) for name, s in scales.items()}


@torch.no_grad()
def _log_probs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [F.log_softmax(model(x[i : i + batch_size]).double(), dim=1)
         for i in range(0, len(x), batch_size)]
    )  # fmt: skip


def _kl(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean KL(original || approximation) over the samples, from log-probabilities, >= 0.

    With d = log p - log q, KL = sum p * d = sum p * (d - 1 + exp(-d)), since p and q each sum
    to 1; every term of the second sum is >= 0 (x - 1 + e^-x >= 0), so unlike the first it
    cannot round to a negative total. A term can still round to -1 ulp where d is tiny: clamped
    at 0, its true value.
    """
    d = reference - approx
    terms = reference.exp() * (d + torch.expm1(-d))
    return float(terms.clamp_min(0).sum(dim=1).mean())
