"""Per-channel weight-error sensitivities ("noise gains", the paper's alpha).

For one conv layer with weight W (M outputs, Kh x Kw kernels) and input channel c,

    alpha_c = mean_x sum_{j != t} ||d(z_t - z_j)/dW_c||^2 / (2 (z_t - z_j)^2 M Kh Kw),

with z the logits on input x and t = argmax z: how much a unit of squared weight error in
channel c moves the output margins, relative to the margins themselves. The paper averages it
over adversarial examples (PGD on training data), with the model in eval mode.

How it is computed here, batched (the reference code ran one backward pass per sample per class
pair, in train mode): one forward pass records each layer's input; one backward pass vectorised
over the class pairs (`torch.autograd.grad(..., is_grads_batched=True)`) gives every sample's
gradient with respect to each layer's output, delta; the per-sample weight gradient of a conv is
the identity dL/dW[m, c, k] = sum_p delta[m, p] * unfold(x)[c, k, p] over output positions p,
evaluated per sample with one einsum. No per-sample loop, no per-pair loop.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdws_export._files import atomic_output, check_zip_integrity
from gdws_export.attacks.config import CalibrationConfig
from gdws_export.errors import InvalidInputError, UnsupportedModelError, plain_line
from gdws_export.gdws.inputs import CalibrationData, approximable_sites, calibration_batches
from gdws_export.gdws.selection import ConvSite

_FORMAT = "gdws-export/alphas/1"
# Largest per-sample gradient block materialised at once, in elements (about 256 MB of float32).
_BLOCK_ELEMENTS = 64 * 2**20


def noise_gains(
    model: nn.Module,
    data: CalibrationData,
    *,
    calibration: CalibrationConfig | None = None,
    skip_first: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: bool = False,
    **settings: Any,
) -> dict[str, torch.Tensor]:
    """Alpha of every input channel of every approximable conv, from adversarial examples.

    Args:
        model: a classifier taking [0, 1] images (normalization inside). Evaluated in eval
            mode; its mode is restored afterwards.
        data: an (images, labels) pair of tensors, or an iterable of such batches (a
            DataLoader). The first `samples` samples are used.
        calibration: the samples and the PGD attack (attack=None: clean inputs). Defaults to
            `CalibrationConfig()`: the paper's L-inf attack, eps 8/255, 10 steps of 2/255, on
            512 samples (the paper used 1000) in batches of 128.
        skip_first, include, exclude: which convs (as in `approximate`).
        progress: show a progress bar.
        **settings: any `CalibrationConfig` field (attack, eps, steps, step_size, norm,
            samples, batch_size, seed), overriding `calibration`'s.

    Returns:
        {layer name: (C,) float64 tensor of alphas}, ready for `approximate(alphas=...)`.

    Example:
        >>> alphas = noise_gains(model, (x, y), samples=1000)  # doctest: +SKIP
    """
    config = CalibrationConfig.resolve(calibration, **settings)
    sites = approximable_sites(model, skip_first, include, exclude)
    sums = {s.name: torch.zeros(s.conv.in_channels, dtype=torch.float64) for s in sites}
    seen = 0
    was_training = model.training
    model.eval()
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.samples, desc="noise gains", unit="img", disable=not progress)
        for x, _ in calibration_batches(model, data, config):
            for name, total in _batch_gains(model, sites, x).items():
                sums[name] += total
            seen += len(x)
            bar.update(len(x))
        bar.close()
    finally:
        model.train(was_training)
    if seen == 0:
        raise InvalidInputError("data holds no samples")
    return {name: total / seen for name, total in sums.items()}


def _batch_gains(
    model: nn.Module, sites: list[ConvSite], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Sum over the batch of each sample's alpha terms, per layer: {name: (C,) float64}."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, args, out):
            inputs[name] = args[0].detach()
            outputs[name] = out

        return hook

    hooks = [s.conv.register_forward_hook(record(s.name)) for s in sites]
    try:
        with torch.enable_grad():
            # The input needs grad so that every conv output is in the graph, even when the
            # model's parameters are frozen.
            logits = model(x.detach().requires_grad_(True))
    finally:
        for hook in hooks:
            hook.remove()
    if logits.dim() != 2:
        raise UnsupportedModelError(f"expected (batch, classes) logits, got {tuple(logits.shape)}")
    batch, classes = logits.shape
    if classes < 2:
        raise UnsupportedModelError("noise gains need a classifier with at least 2 classes")
    top = logits.argmax(dim=1)
    # The classes j != t of every sample, as a (classes - 1, b) index.
    others = torch.arange(classes, device=logits.device).expand(batch, classes)
    others = others[others != top[:, None]].reshape(batch, classes - 1).T
    eye = torch.eye(classes, dtype=logits.dtype, device=logits.device)
    cotangents = eye[top][None, :, :] - eye[others]  # (j, b, classes): e_t - e_j
    margins = (logits.gather(1, top[:, None]).T - logits.gather(1, others.T).T).detach()
    # A tie (z_t == z_j) puts the sample on the decision boundary, where the first-order
    # model breaks down (alpha would be infinite): such pairs are left out.
    scale = torch.where(margins == 0, 0.0, 1.0 / (2 * margins.double() ** 2))

    names = [s.name for s in sites]
    grads = torch.autograd.grad(
        logits, [outputs[n] for n in names], grad_outputs=cotangents, is_grads_batched=True
    )
    gains = {}
    for site, delta in zip(sites, grads, strict=True):
        norms = _channel_grad_norms(site.conv, inputs[site.name], delta)  # (j, b, C)
        kh, kw = site.conv.kernel_size
        weight = scale / (site.conv.out_channels * kh * kw)
        gains[site.name] = torch.einsum("jbc,jb->c", norms.double(), weight).cpu()
    return gains


def _channel_grad_norms(
    conv: nn.Conv2d, x: torch.Tensor, delta: torch.Tensor, method: str | None = None
) -> torch.Tensor:
    """||dL/dW_c||^2 per pair j, sample b and input channel c, from the layer input x (b, C, H,
    W) and the gradients delta (j, b, M, Ho, Wo) of each pair's loss w.r.t. the conv output.

    With D = delta (M x P, P output positions) and X_c = the unfolded input of channel c
    (K x P), the gradient block is D X_c^T. Its squared norm is computed directly or, when P is
    small next to M and C*K (deep layers), through Gram matrices of the positions:
    ||D X_c^T||^2 = <D^T D, X_c^T X_c>, which never forms the (M x C*K) gradient.
    `method` ("direct" or "gram") forces one way; None picks the cheaper.
    """
    groups, (kh, kw) = conv.groups, conv.kernel_size
    pairs, batch, m = delta.shape[:3]
    c, taps = conv.in_channels, kh * kw
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    patches = F.unfold(padded, (kh, kw), dilation=conv.dilation, stride=conv.stride)
    patches = patches.reshape(batch, groups, c // groups, taps, -1)  # (b, g, C/g, K, P)
    delta = delta.reshape(pairs, batch, groups, m // groups, -1)  # (j, b, g, M/g, P)
    positions = patches.shape[-1]
    direct = pairs * m * (c // groups) * taps * positions  # per sample, both MACs and memory
    gram = positions**2 * (pairs * m + c * taps + pairs * c)
    use_direct = direct <= gram if method is None else method == "direct"
    step = max(1, _BLOCK_ELEMENTS // (direct if use_direct else gram))
    norms = []
    for start in range(0, batch, step):
        d, u = delta[:, start : start + step], patches[start : start + step]
        if use_direct:
            grad = torch.einsum("jbgmp,bgckp->jbgmck", d, u)
            norms.append(grad.pow(2).sum(dim=(3, 5)).reshape(pairs, -1, c))
        else:
            d_gram = torch.einsum("jbgmp,jbgmq->jbgpq", d, d)
            u_gram = torch.einsum("bgckp,bgckq->bgcpq", u, u)
            norms.append(torch.einsum("jbgpq,bgcpq->jbgc", d_gram, u_gram).reshape(pairs, -1, c))
    return torch.cat(norms, dim=1)


def save_alphas(
    alphas: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    input_moments: Mapping[str, torch.Tensor] | None = None,
    **meta,
) -> None:
    """Save alphas (with activation-aware `input_moments`, and JSON-able settings, e.g.
    eps=..., samples=...) to a file, atomically."""
    path = os.fspath(path)
    payload = {
        "format": _FORMAT,
        "alphas": {name: torch.as_tensor(a).detach().cpu() for name, a in alphas.items()},
        "meta": dict(meta),
    }
    if input_moments is not None:
        payload["input_moments"] = {
            name: torch.as_tensor(m).detach().cpu() for name, m in input_moments.items()
        }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_alphas(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load alphas saved by `save_alphas`. Never runs code from the file (weights_only)."""
    return dict(_read(path)["alphas"])


def load_input_moments(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The input moments saved beside the alphas (activation-aware), or None."""
    moments = _read(path).get("input_moments")
    return None if moments is None else dict(moments)


def _read(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidInputError(f"alphas file {path!r} does not exist")
    if zipfile.is_zipfile(path):
        check_zip_integrity(path, "alphas file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file, or pickling objects
        raise InvalidInputError(
            f"alphas file {path!r} cannot be read ({plain_line(str(exc))}); it is corrupt or "
            "not an alphas file written by gdws-export"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise InvalidInputError(f"{path!r} is not an alphas file written by gdws-export")
    return payload
