"""Per-channel SVD of a conv weight and the two optimal kernel allocations, MEGO and LEGO.

Notation (Dbouk & Shanbhag, NeurIPS 2021): a conv weight W of shape (M, C/groups, Kh, Kw) is
split into one block per input channel c, W_c of shape (M/groups, Kh*Kw): the rows are the
outputs of c's group, the columns the kernel taps. With W_c = U S V^T, keeping the top g_c
singular triplets is the best rank-g_c approximation of W_c, and the weighted error of a choice
{g_c} is

    sum_c alpha_c * sum_{i > g_c} s_{c,i}^2 .

The terms separate over (c, i), so both problems are solved exactly by sorting the values
alpha_c * s_{c,i}^2 once:

- MEGO (least error under a budget of G kernels) keeps the G largest values;
- LEGO (fewest kernels under an error bound beta) drops the smallest values while their
  running sum stays <= beta.

Singular values within a channel are sorted, so each channel keeps a prefix of its triplets and
only the count g_c matters. Everything here is batched over channels: one SVD call per layer.

Activation-aware SVD (`input_moment`): what the network feels is not the weight error but the
output error, (W_c - W'_c) p for the patches p of channel c that the layer actually sees. With
the patches' second moment S_c = E[p p^T] = L_c L_c^T, E||(W_c - W'_c) p||^2 =
||(W_c - W'_c) L_c||_F^2, so the best rank-g_c approximation in that metric is the truncated
SVD of W_c L_c, mapped back by L_c^-1 (Eckart-Young in the whitened space). It is still a sum
of rank-1 terms (PW column x GDW kernel), so GDWS, MEGO and LEGO apply unchanged, with
s_{c,i}^2 now the expected squared output error of dropping triplet i. Natural-image patches
are smooth, so S_c is far from isotropic: weight directions the data never excites (e.g. the
taps that only ever see zero padding on a 1 x 1 feature map) cost nothing to drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdws_export.errors import InvalidInputError


@dataclass(frozen=True)
class ChannelSVD:
    """Batched SVD of the per-input-channel blocks of a conv weight.

    Attributes:
        u: (C, M/groups, r) left singular vectors of each channel block.
        s: (C, r) singular values, descending, r = min(M/groups, Kh*Kw).
        vh: (C, r, Kh*Kw) right singular vectors (rows) of each channel block.
        groups: the conv's groups; channel c belongs to group c // (C/groups).

    With an input moment (activation-aware), vh holds the unit-norm kernels V^T L^-1 and u the
    matching PW columns (scaled by the kernels' norms): u s vh still rebuilds the block, but u
    and vh are no longer orthonormal, and s is measured in the moment's metric.
    """

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    groups: int

    @property
    def rank(self) -> int:
        """Number of singular values per channel, min(M/groups, Kh*Kw)."""
        return self.s.shape[1]


def channel_blocks(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Reshape a conv weight (M, C/groups, Kh, Kw) into per-input-channel blocks (C, M/groups, K).

    Block c holds the weights from input channel c to the outputs of its group, one row per
    output and one column per kernel tap.
    """
    m, c_per_group, kh, kw = weight.shape
    m_per_group = m // groups
    w = weight.reshape(groups, m_per_group, c_per_group, kh * kw)
    return w.permute(0, 2, 1, 3).reshape(groups * c_per_group, m_per_group, kh * kw)


RIDGE = 1e-3  # added to an input moment, times its layer's mean per-tap energy (see below)


def channel_svd(
    weight: torch.Tensor, groups: int = 1, input_moment: torch.Tensor | None = None
) -> ChannelSVD:
    """SVD of every per-channel block of a conv weight, in one batched call.

    Args:
        weight: (M, C/groups, Kh, Kw) conv weight.
        groups: the conv's groups.
        input_moment: None for the paper's SVD (least weight error), or (C, K, K) second
            moments E[p p^T] of each input channel's K = Kh*Kw patch taps (`input_moments`
            measures them): the SVD then gives the least expected output error (module doc).
            `RIDGE` times the layer's mean per-tap energy is added to the diagonal, so taps the
            data never excites still get a well-defined (tiny) weight.

    Runs in float64 on the CPU (small matrices, exactness matters more than speed here).
    """
    check_weight(weight)
    blocks = channel_blocks(weight.detach().to("cpu", torch.float64), groups)
    if input_moment is None:
        u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
        return ChannelSVD(u=u, s=s, vh=vh, groups=groups)
    root = moment_root(input_moment, blocks.shape[0], blocks.shape[2])
    u, s, vh = torch.linalg.svd(blocks @ root, full_matrices=False)
    # vh L^-1, by solving X L = vh as L^T X^T = vh^T.
    vh = torch.linalg.solve_triangular(root.transpose(1, 2), vh.transpose(1, 2), upper=True)
    vh = vh.transpose(1, 2)
    # Unit-norm GDW kernels, scale moved into the PW columns: the same product, and weights of
    # ordinary magnitude (L^-1 is large along taps with little energy; FP16 engines care).
    norms = vh.norm(dim=2, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return ChannelSVD(u=u * norms.transpose(1, 2), s=s, vh=vh / norms, groups=groups)


def moment_root(input_moment: torch.Tensor, channels: int, taps: int) -> torch.Tensor:
    """Lower Cholesky factor L_c of each channel's regularized input moment S_c + ridge * I.

    The ridge is `RIDGE` times the layer's mean diagonal entry (the same for every channel, so
    channels keep their relative weight); a layer whose inputs were all zero gets the identity.
    """
    moment = torch.as_tensor(input_moment).detach().to("cpu", torch.float64)
    if moment.shape != (channels, taps, taps):
        raise InvalidInputError(
            f"input moment has shape {tuple(moment.shape)}, expected ({channels}, {taps}, {taps}):"
            " one taps x taps matrix per input channel"
        )
    if not torch.isfinite(moment).all():
        raise InvalidInputError("input moment contains NaN or Inf")
    moment = (moment + moment.transpose(1, 2)) / 2
    if (moment.diagonal(dim1=1, dim2=2) < 0).any():
        raise InvalidInputError("input moment is not positive semi-definite")
    eye = torch.eye(taps, dtype=torch.float64)
    per_tap = moment.diagonal(dim1=1, dim2=2).mean(dim=1)  # (C,)
    layer = float(per_tap.mean())
    if layer <= 0:
        return eye.expand(channels, taps, taps).clone()
    # A channel that never fires gets the layer's scale: its error then costs little, not 0/0.
    scale = torch.where(per_tap > 0, per_tap, torch.full_like(per_tap, layer))
    root, info = torch.linalg.cholesky_ex(moment + RIDGE * scale[:, None, None] * eye)
    if (info != 0).any():
        raise InvalidInputError("input moment is not positive semi-definite")
    return root


def error_values(svd: ChannelSVD, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """alpha_c * s_{c,i}^2 for every (channel, triplet): the weighted error of dropping it."""
    channels = svd.s.shape[0]
    alpha = check_alpha(alpha, channels)
    return alpha.to(svd.s)[:, None] * svd.s**2


def mego(values: torch.Tensor, max_kernels: int, *, min_kernels: int = 1) -> torch.Tensor:
    """Kernel counts of least weighted error using at most `max_kernels` kernels (MEGO).

    Args:
        values: (C, r) weighted error of dropping each triplet, non-increasing along dim 1
            (as `error_values` returns them).
        max_kernels: the budget G, at least `min_kernels`.
        min_kernels: the layer keeps at least this many kernels even when they remove no error,
            so it stays a conv (an empty layer is a constant, which no runtime wants).

    Returns:
        (C,) int64 kernels per channel. Triplets whose value is 0 are never kept beyond the
        minimum: they cost MACs and remove no error.
    """
    if isinstance(max_kernels, bool) or not isinstance(max_kernels, int):
        raise InvalidInputError(f"max_kernels must be an int, got {max_kernels!r}")
    if max_kernels < min_kernels:
        raise InvalidInputError(f"max_kernels must be >= {min_kernels}, got {max_kernels}")
    flat = values.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    take = order[: min(max_kernels, flat.numel())]
    keep[take] = flat[take] > 0
    keep[order[:min_kernels]] = True
    return keep.reshape(values.shape).sum(dim=1)


def lego(values: torch.Tensor, beta: float, *, min_kernels: int = 1) -> torch.Tensor:
    """Fewest kernels per channel whose weighted error stays <= `beta` (LEGO).

    Drops the smallest values while their running sum stays <= beta; that is the largest set of
    triplets that can be dropped, so the kept count is minimal. At least `min_kernels` kernels
    (the largest values) are kept, which only lowers the error.

    Returns:
        (C,) int64 kernels per channel.
    """
    beta = check_beta(beta)
    flat = values.reshape(-1)
    order = torch.argsort(flat, stable=True)  # ascending
    dropped_sum = torch.cumsum(flat[order], dim=0)
    n_drop = int((dropped_sum <= beta).sum())
    n_drop = min(n_drop, flat.numel() - min_kernels)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:n_drop]] = False
    return keep.reshape(values.shape).sum(dim=1)


def weighted_error(values: torch.Tensor, kernels_per_channel: torch.Tensor) -> float:
    """sum_c sum_{i >= g_c} values[c, i]: the weighted error of keeping g_c triplets per channel."""
    rank = values.shape[1]
    dropped = torch.arange(rank, device=values.device)[None, :] >= kernels_per_channel[:, None]
    return float((values * dropped).sum())


def check_beta(beta: float) -> float:
    """Validate an error bound: a finite number >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise InvalidInputError(f"beta must be a finite number >= 0, got {beta!r}")
    if beta < 0:
        raise InvalidInputError(f"beta must be >= 0, got {beta}")
    return float(beta)


def check_alpha(alpha: torch.Tensor | None, channels: int, layer: str = "") -> torch.Tensor:
    """Validate per-channel sensitivities; None means all ones (unweighted GDWS)."""
    where = f" for layer {layer!r}" if layer else ""
    if alpha is None:
        return torch.ones(channels, dtype=torch.float64)
    alpha = torch.as_tensor(alpha).detach().to(torch.float64).reshape(-1).cpu()
    if alpha.numel() != channels:
        raise InvalidInputError(
            f"alpha{where} has {alpha.numel()} entries, expected one per input channel ({channels})"
        )
    if not torch.isfinite(alpha).all():
        raise InvalidInputError(f"alpha{where} contains NaN or Inf")
    if (alpha < 0).any():
        raise InvalidInputError(f"alpha{where} has negative entries; sensitivities must be >= 0")
    return alpha


def check_weight(weight: torch.Tensor) -> None:
    """Refuse anything but a 4-D conv weight of finite values."""
    if weight.dim() != 4:
        raise InvalidInputError(f"expected a 4-D conv weight, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise InvalidInputError("conv weight contains NaN or Inf")
