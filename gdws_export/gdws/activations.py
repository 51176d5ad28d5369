"""Activation-aware sensitivities: measure what each conv's inputs look like, then weigh errors
by the output change they cause rather than by the weights they change.

The paper's alphas are one number per input channel. The output error of dropping a triplet
also depends on the direction of the kernel it drops: a kernel of high spatial frequency barely
moves the output on smooth images. `input_moments` records, for every approximable conv, the
second moment S_c = E[p p^T] of each input channel's patches p (Kh*Kw taps), on clean and on
adversarial inputs (the inputs a robust model must keep right). Given these,
`channel_svd(..., input_moment=S_c)` finds per channel the rank-g approximation of least
expected output error (see `decomposition`).

Across layers, `activation_gains` puts every layer's error in relative units: each layer's
alphas are 1 / E||W p||^2 (its expected output energy), so the global budget trades relative
output error, which the batch norms around every conv make comparable between layers.
`relative_gains` does the same with the weights alone (1 / ||W||_F^2): no data needed.

Cost: one PGD pass over the samples and one forward pass over twice as many inputs; no
per-layer search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.attacks.config import CalibrationConfig
from gdws_export.gdws.decomposition import channel_blocks, moment_root
from gdws_export.gdws.inputs import CalibrationData, approximable_sites, clean_and_attacked
from gdws_export.gdws.selection import find_convs

PATCH_CHUNK = 16  # samples unfolded at a time: unfold holds Kh*Kw copies of the input


def input_moments(
    model: nn.Module,
    data: CalibrationData,
    *,
    calibration: CalibrationConfig | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **settings: Any,
) -> dict[str, torch.Tensor]:
    """Per-channel patch second moments of every approximable conv's input.

    Args:
        model: a classifier taking [0, 1] images; evaluated in eval mode (mode restored).
        data: (images, labels) tensors or an iterable of such batches; the first `samples`.
        calibration: the samples and the PGD attack whose images join the clean ones
            (attack=None: clean images only). Defaults to `CalibrationConfig()`.
        skip_first, include, exclude: which convs (as in `approximate`).
        **settings: any `CalibrationConfig` field, overriding `calibration`'s.

    Returns:
        {layer name: (C, K, K) float64 moments E[p p^T], K = Kh*Kw}, averaged over every
        output position of every input, for `approximate(input_moments=...)`.
    """
    config = CalibrationConfig.resolve(calibration, **settings)
    sites = approximable_sites(model, skip_first, include, exclude)
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str, conv: nn.Conv2d):
        def hook(module, inputs, output):
            total, n = _patch_moment_sum(conv, inputs[0].detach())
            sums[name] = sums[name] + total if name in sums else total
            counts[name] = counts.get(name, 0) + n

        return hook

    try:
        images = clean_and_attacked(model, data, config)
        # Hooks only now, so the attack's own forward passes are not counted.
        handles = [s.conv.register_forward_hook(record(s.name, s.conv)) for s in sites]
        try:
            with torch.no_grad():
                for x in images:
                    for i in range(0, len(x), config.batch_size):
                        model(x[i : i + config.batch_size])
        finally:
            for handle in handles:
                handle.remove()
    finally:
        model.train(was_training)
    return {s.name: sums[s.name] / counts[s.name] for s in sites if s.name in sums}


def activation_gains(
    model: nn.Module, moments: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Alphas for `approximate` with `input_moments`: ones within each layer, each layer scaled
    by 1 / (its expected output energy E||W p||^2 in the moments' metric)."""
    gains = {}
    for site in find_convs(model):
        if site.skip_reason is not None or site.name not in moments:
            continue
        # ||W_c L_c||_F^2 summed over channels: the sum of all s^2 of the activation-aware
        # SVD, without computing it (approximate will).
        blocks = channel_blocks(site.conv.weight.detach().double().cpu(), site.conv.groups)
        root = moment_root(moments[site.name], blocks.shape[0], blocks.shape[2])
        energy = float((blocks @ root).pow(2).sum())
        scale = 1 / energy if energy > 0 else 1.0
        gains[site.name] = torch.full((site.conv.in_channels,), scale, dtype=torch.float64)
    return gains


def relative_gains(
    model: nn.Module,
    *,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Alphas that trade relative weight error between layers: ones within each approximable
    layer, scaled by 1 / ||W_l||_F^2. No data, no attack: the data-free counterpart of
    `activation_gains` (a layer's weighted error is then the fraction of its weight energy
    dropped)."""
    gains = {}
    for site in find_convs(model, skip_first=skip_first, include=include, exclude=exclude):
        if site.skip_reason is None:
            energy = float(site.conv.weight.detach().double().pow(2).sum())
            scale = 1 / energy if energy > 0 else 1.0
            gains[site.name] = torch.full((site.conv.in_channels,), scale, dtype=torch.float64)
    return gains


def _patch_moment_sum(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum over patches of p p^T per input channel as (C, K, K) float64, number of patches)."""
    # Pad as the conv does (any padding mode, 'same' included), then unfold without padding.
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    kh, kw = conv.kernel_size
    taps, channels = kh * kw, conv.in_channels
    total = torch.zeros(channels, taps, taps, dtype=torch.float64)
    patches_seen = 0
    for start in range(0, len(x), PATCH_CHUNK):
        chunk = F.pad(x[start : start + PATCH_CHUNK], conv._reversed_padding_repeated_twice,
                      mode=mode)  # fmt: skip
        patches = F.unfold(chunk, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
        n, _, positions = patches.shape
        # (n, C*K, L) -> (C, n*L, K): channel-major taps, as in conv weights.
        p = patches.reshape(n, channels, taps, positions).permute(1, 0, 3, 2)
        p = p.reshape(channels, n * positions, taps).to("cpu", torch.float64)
        total += p.transpose(1, 2) @ p
        patches_seen += n * positions
    return total, patches_seen
