"""Weight factorizations of a conv: Tucker-2 by HOSVD, and the two-factor truncated SVD.

Notation: a conv weight W of shape (M, C/g, Kh, Kw) with g groups is g independent blocks
W_j of shape (M/g, C/g, Kh, Kw); every factorization here works block by block with the same
ranks in every group (a grouped conv needs equal group widths), and errors add over groups.

- Two-factor (CSTAR-style low rank): the mode-0 matricization W_j(0) of shape
  M/g x (C/g*Kh*Kw) is cut to its top r singular triplets. By Eckart-Young that is the best
  rank-r approximation, and its squared Frobenius error is the sum of the discarded squared
  singular values. It runs as a KxK conv (C -> g*r) then a 1x1 conv (g*r -> M).
- Tucker-2 (HOSVD): U_out holds the top r_out left singular vectors of W_j(0), U_in the top
  r_in of the mode-1 matricization W_j(1) (C/g x M/g*Kh*Kw), and the core is
  G = W x_0 U_out^T x_1 U_in^T of shape (r_out, r_in, Kh, Kw). It runs as a 1x1 conv
  (C -> g*r_in), the KxK core (g*r_in -> g*r_out), then a 1x1 conv (g*r_out -> M). The
  approximation is an orthogonal projection of W, so its squared error is
  ||W||^2 - ||G||^2, which is at most the discarded squared singular values of both
  matricizations (de Lathauwer et al. 2000). Truncating the factors truncates the core, so
  one full core gives the error of every rank pair at once (a 2-D cumulative sum).

Alpha weighting: with per-input-channel sensitivities alpha_c the error that matters is
sum_c alpha_c ||W[:, c] - W_hat[:, c]||^2. Scaling input channel c by sqrt(alpha_c) before
the factorization and by 1/sqrt(alpha_c) after makes both factorizations optimal in that
metric (Eckart-Young in the scaled space), and the errors below are then weighted errors.
A channel with alpha_c = 0 is dropped (its error costs nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.decomposition import check_alpha, check_weight


@dataclass(frozen=True)
class LowRankFactors:
    """Truncated SVD of the mode-0 matricization A of every group of a conv weight (float64,
    CPU), kept as A's projections on its left singular vectors.

    Attributes:
        u: (g, M/g, R) left singular vectors, R = min(M/g, C/g*Kh*Kw).
        s: (g, R) singular values, descending (in the alpha-scaled space when weighted).
        projection: (g, R, C/g*Kh*Kw) U^T A = S V^T, unscaled back (1/sqrt(alpha)).
        kept: (g, R) squared norms of the rows of U^T A in the scaled space (= s^2 up to
            round-off), which give the exact error of the projection that is built.
        energy: ||A||^2 summed over groups (weighted).
        kernel_size: (Kh, Kw).
    """

    u: torch.Tensor
    s: torch.Tensor
    projection: torch.Tensor
    kept: torch.Tensor
    energy: float
    kernel_size: tuple[int, int]

    @property
    def max_rank(self) -> int:
        """R: the rank that reproduces the weight exactly."""
        return self.s.shape[1]

    def errors(self) -> torch.Tensor:
        """(R,) squared (weighted) error of ranks 1..R, summed over groups: ||A||^2 minus the
        energy kept, which is the sum of the discarded squared singular values."""
        return (self.energy - self.kept.sum(0).cumsum(0)).clamp_min(0)

    def weights(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(KxK weight (g*r, C/g, Kh, Kw), 1x1 weight (M, r, 1, 1)) of rank r, float64.

        sqrt(s) goes to each side, so both factors have the weight's magnitude (FP16 engines
        prefer that to one large and one unit-norm factor); directions with s ~ 0 stay as
        they are rather than be divided by ~0.
        """
        groups, m_per_group, _ = self.u.shape
        kh, kw = self.kernel_size
        s = self.s[:, :rank]
        tiny = 1e-12 * self.s[:, :1].clamp_min(1e-300)
        root = torch.where(s > tiny, s, torch.ones_like(s)).sqrt()
        spatial = (self.projection[:, :rank] / root[:, :, None]).reshape(groups * rank, -1, kh, kw)
        pointwise = (self.u[:, :, :rank] * root[:, None, :]).reshape(groups * m_per_group, rank)
        return spatial, pointwise[:, :, None, None]


@dataclass(frozen=True)
class Tucker2Factors:
    """HOSVD of every group of a conv weight, enough to build any rank pair (float64, CPU).

    Attributes:
        u_out: (g, M/g, R0) left singular vectors of the mode-0 matricization.
        s_out: (g, R0) its singular values, R0 = min(M/g, C/g*Kh*Kw).
        u_in: (g, C/g, R1) left singular vectors of the mode-1 matricization (scaled space).
        s_in: (g, R1) its singular values, R1 = min(C/g, M/g*Kh*Kw).
        core: (g, R0, R1, Kh, Kw) the full core W x_0 U_out^T x_1 U_in^T.
        unscale: (g, C/g) 1/sqrt(alpha) per input channel (0 where alpha is 0), or None.
        energy: ||W||^2 (weighted), so that error = energy - ||truncated core||^2.
    """

    u_out: torch.Tensor
    s_out: torch.Tensor
    u_in: torch.Tensor
    s_in: torch.Tensor
    core: torch.Tensor
    unscale: torch.Tensor | None
    energy: float

    @property
    def max_ranks(self) -> tuple[int, int]:
        """(R0, R1): the ranks that reproduce the weight exactly."""
        return self.s_out.shape[1], self.s_in.shape[1]

    def errors(self) -> torch.Tensor:
        """(R0, R1) squared (weighted) error of every rank pair: entry [i, j] is the error of
        ranks (i + 1, j + 1)."""
        kept = self.core.pow(2).sum(dim=(0, 3, 4)).cumsum(0).cumsum(1)
        return (self.energy - kept).clamp_min(0)

    def bound(self) -> torch.Tensor:
        """(R0, R1) the HOSVD bound on `errors`: discarded squared singular values of both
        matricizations."""
        out_tail = _tails(self.s_out)
        in_tail = _tails(self.s_in)
        return out_tail[:, None] + in_tail[None, :]

    def weights(self, ranks: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """(first 1x1 (g*r_in, C/g, 1, 1), core (g*r_out, r_in, Kh, Kw), last 1x1
        (M, r_out, 1, 1)) of ranks (r_out, r_in), float64."""
        r_out, r_in = ranks
        groups, m_per_group, _ = self.u_out.shape
        kh, kw = self.core.shape[-2:]
        first = self.u_in[:, :, :r_in].transpose(1, 2)  # (g, r_in, C/g)
        if self.unscale is not None:
            first = first * self.unscale[:, None, :]
        core = self.core[:, :r_out, :r_in].reshape(groups * r_out, r_in, kh, kw)
        last = self.u_out[:, :, :r_out].reshape(groups * m_per_group, r_out)
        return first.reshape(groups * r_in, -1, 1, 1), core, last[:, :, None, None]


def lowrank_factors(
    weight: torch.Tensor, groups: int = 1, alpha: torch.Tensor | None = None
) -> LowRankFactors:
    """Truncated-SVD factors of the two-factor form, for every rank at once.

    Args:
        weight, groups: a conv's (M, C/g, Kh, Kw) weight and its groups.
        alpha: (C,) per-input-channel sensitivities; None means unweighted.

    Example:
        >>> f = lowrank_factors(torch.randn(8, 4, 3, 3))
        >>> f.max_rank, f.errors().shape
        (8, torch.Size([8]))
    """
    blocks, unscale = _scaled_blocks(weight, groups, alpha)
    g, m, c, kh, kw = blocks.shape
    matrix = blocks.reshape(g, m, c * kh * kw)
    u, s = _left_singular(matrix)
    projection = u.transpose(1, 2) @ matrix
    kept = projection.pow(2).sum(2)
    if unscale is not None:
        projection = projection.reshape(g, -1, c, kh * kw) * unscale[:, None, :, None]
    return LowRankFactors(
        u=u,
        s=s,
        projection=projection.reshape(g, -1, c * kh * kw),
        kept=kept,
        energy=float(matrix.pow(2).sum()),
        kernel_size=(kh, kw),
    )


def tucker2_factors(
    weight: torch.Tensor, groups: int = 1, alpha: torch.Tensor | None = None
) -> Tucker2Factors:
    """HOSVD (Tucker-2 over the output and input channel modes) of a conv weight; the
    arguments are those of `lowrank_factors`.

    Example:
        >>> f = tucker2_factors(torch.randn(8, 4, 3, 3))
        >>> f.max_ranks, float(f.errors()[-1, -1]) < 1e-20
        ((8, 4), True)
    """
    blocks, unscale = _scaled_blocks(weight, groups, alpha)
    g, m, c, kh, kw = blocks.shape
    u_out, s_out = _left_singular(blocks.reshape(g, m, -1))
    u_in, s_in = _left_singular(blocks.transpose(1, 2).reshape(g, c, -1))
    core = torch.einsum("gmo,gmcxy,gci->goixy", u_out, blocks, u_in)
    energy = float(blocks.pow(2).sum())
    return Tucker2Factors(u_out, s_out, u_in, s_in, core, unscale, energy)


def _scaled_blocks(
    weight: torch.Tensor, groups: int, alpha: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(g, M/g, C/g, Kh, Kw) float64 blocks, input channels scaled by sqrt(alpha), and the
    (g, C/g) unscale factors (None when unweighted)."""
    check_weight(weight)
    m, c_per_group, kh, kw = weight.shape
    if groups < 1 or m % groups:
        raise InvalidInputError(f"groups={groups} does not divide the {m} output channels")
    blocks = weight.detach().to("cpu", torch.float64).reshape(groups, m // groups, c_per_group,
                                                              kh, kw)  # fmt: skip
    if alpha is None:
        return blocks, None
    alpha = check_alpha(alpha, groups * c_per_group).reshape(groups, c_per_group)
    root = alpha.sqrt()
    unscale = torch.where(root > 0, 1 / root.clamp_min(1e-300), torch.zeros_like(root))
    return blocks * root[:, None, :, None, None], unscale


def _left_singular(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and values (descending) of a batch of matrices, from the
    eigendecomposition of A A^T: no right vectors are needed (U^T A = S V^T), and for a
    512 x 4608 unfolding this is ~10x faster than an SVD. Squared values lose precision only
    below eps * s_max^2, far under any error a budget trades; the factors are projections on
    these U, and their errors are computed from the projections, so the error identities
    hold for the weights that are built."""
    rank = min(matrix.shape[1], matrix.shape[2])
    values, vectors = torch.linalg.eigh(matrix @ matrix.transpose(1, 2))
    values, vectors = values.flip(-1)[:, :rank], vectors.flip(-1)[:, :, :rank]
    return vectors, values.clamp_min(0).sqrt()


def _tails(s: torch.Tensor) -> torch.Tensor:
    """Discarded squared singular values of ranks 1..R, summed over groups."""
    tail = (s**2).sum(0).flip(0).cumsum(0).flip(0)
    return torch.cat([tail[1:], tail.new_zeros(1)])
