"""`KroneckerLinear`: a Linear layer whose weight is a short sum of Kronecker products.

W (m x n) ~ sum_{r=1..R} A_r (x) B_r, with A_r of shape (m1, n1), B_r of shape (m2, n2),
m = m1*m2 and n = n1*n2. Entry (i1*m2 + i2, j1*n2 + j2) of A (x) B is A[i1, j1] B[i2, j2], so
on the input reshaped to X (n1 x n2, row-major) the layer computes

    Y = sum_r A_r X B_r^T        (m1 x m2, flattened row-major to y),

two small matrix products per term instead of one m x n product.

Nearest Kronecker approximation (Van Loan & Pitsianis 1993): rearrange W into R(W) of shape
(m1*n1) x (m2*n2), whose row (i1, j1) is the block W[i1*m2:(i1+1)*m2, j1*n2:(j1+1)*n2]
flattened. R(A (x) B) = vec(A) vec(B)^T and R only permutes entries, so the best R-term
approximation is the truncated SVD of R(W): A_r = sqrt(s_r) u_r, B_r = sqrt(s_r) v_r, its
squared Frobenius error is the sum of the discarded squared singular values, and
R = rank(R(W)) <= min(m1*n1, m2*n2) reproduces W exactly.

Factor shapes: for the first Linear after flattening a C x H x W activation, n1 = C and
n2 = H*W, so that X is the activation itself (channels x pixels) and B_r acts on pixels, A_r
on channels. Otherwise m and n are split near their square roots (`kronecker_shape`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gdws_export.errors import InvalidInputError

Shape4 = tuple[int, int, int, int]


def kronecker_shape(
    out_features: int, in_features: int, activation: Sequence[int] | None = None
) -> Shape4:
    """Factor shapes (m1, m2, n1, n2) for a Linear of the given size.

    Args:
        out_features, in_features: m and n.
        activation: (C, H, W) when the Linear reads a flattened C x H x W activation: then
            n1 = C and n2 = H*W. None (or H*W == 1): n is split near its square root.

    m = m1*m2 is always split near its square root, the smaller factor first; so is n.

    Example:
        >>> kronecker_shape(10, 512 * 4, activation=(512, 2, 2))
        (2, 5, 512, 4)
        >>> kronecker_shape(100, 64)
        (10, 10, 8, 8)
    """
    m1, m2 = _near_sqrt_split(out_features)
    if activation is not None:
        shape = tuple(int(d) for d in activation)
        if len(shape) != 3 or math.prod(shape) != in_features:
            raise InvalidInputError(
                f"activation {shape} does not flatten to the Linear's {in_features} inputs;"
                " pass the (C, H, W) of the tensor the Linear reads"
            )
        if shape[1] * shape[2] > 1:
            return m1, m2, shape[0], shape[1] * shape[2]
    n1, n2 = _near_sqrt_split(in_features)
    return m1, m2, n1, n2


def kronecker_macs(shape: Shape4, rank: int) -> int:
    """MACs per input row of a rank-R `KroneckerLinear` (the cheaper order of its forward)."""
    m1, m2, n1, n2 = shape
    return rank * min(n1 * m2 * (n2 + m1), m1 * n2 * (n1 + m2))


def rearrange(weight: torch.Tensor, shape: Shape4) -> torch.Tensor:
    """Van Loan-Pitsianis rearrangement R(W) of shape (m1*n1, m2*n2) (module docstring)."""
    m1, m2, n1, n2 = shape
    return weight.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def kronecker_factors(
    weight: torch.Tensor, shape: Shape4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-Kronecker factors of every rank at once, in float64 on the CPU.

    Returns:
        (a, b, s): a (R, m1, n1) and b (R, m2, n2), sqrt(s_r) in each factor, and the
        singular values s (R,) of R(W), R = min(m1*n1, m2*n2); keeping the first r terms is
        the best r-term approximation, with squared error sum(s[r:]**2).
    """
    m1, m2, n1, n2 = _check_shape(weight, shape)
    u, s, vh = torch.linalg.svd(rearrange(weight.detach().to("cpu", torch.float64), shape),
                                full_matrices=False)  # fmt: skip
    root = s.sqrt()
    a = (u * root).T.reshape(-1, m1, n1)
    b = (root[:, None] * vh).reshape(-1, m2, n2)
    return a, b, s


class KroneckerLinear(nn.Module):
    """A Linear layer y = sum_r A_r X B_r^T (+ bias) on the input reshaped to X (n1 x n2).

    Input (*, n) -> output (*, m), as `nn.Linear`. The forward is two batched MatMuls and
    reshapes, so it exports to plain ONNX MatMul nodes.

    Example:
        >>> linear = nn.Linear(64, 100)
        >>> kron = KroneckerLinear.from_linear(linear, rank=64)   # full rank: the same layer
        >>> x = torch.randn(3, 64)
        >>> torch.allclose(kron(x), linear(x), atol=1e-5)
        True
    """

    def __init__(
        self,
        shape: Shape4,
        rank: int,
        *,
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        m1, m2, n1, n2 = self.shape = tuple(int(d) for d in shape)
        limit = min(m1 * n1, m2 * n2)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise InvalidInputError(f"rank must be an int in [1, {limit}] for shape {shape}")
        self.rank = rank
        self.in_features, self.out_features = n1 * n2, m1 * m2
        self.weighted_error = 0.0
        factory = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(rank, m1, n1, **factory))
        self.b = nn.Parameter(torch.empty(rank, m2, n2, **factory))
        self.bias = nn.Parameter(torch.empty(m1 * m2, **factory)) if bias else None
        # A static choice, so the exported graph holds one order only.
        self.a_first = m1 * n2 * (n1 + m2) < n1 * m2 * (n2 + m1)

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, linear: nn.Linear, rank: int, shape: Shape4 | None = None
    ) -> KroneckerLinear:
        """The nearest rank-`rank` Kronecker approximation of `linear` (bias kept).

        Args:
            linear: an `nn.Linear`.
            rank: number of Kronecker terms R, at most min(m1*n1, m2*n2) (which is exact).
            shape: (m1, m2, n1, n2); None: `kronecker_shape(out_features, in_features)`.
        """
        if not isinstance(linear, nn.Linear):
            raise InvalidInputError(f"expected an nn.Linear, got {type(linear).__name__}")
        if shape is None:
            shape = kronecker_shape(linear.out_features, linear.in_features)
        a, b, s = kronecker_factors(linear.weight, shape)
        weight = linear.weight
        module = cls(shape, rank, bias=linear.bias is not None, device=weight.device,
                     dtype=weight.dtype)  # fmt: skip
        module.a.copy_(a[:rank])
        module.b.copy_(b[:rank])
        if linear.bias is not None:
            module.bias.copy_(linear.bias)
        module.weighted_error = float((s[rank:] ** 2).sum())
        return module.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m1, m2, n1, n2 = self.shape
        lead, rank = x.shape[:-1], self.rank
        x = x.reshape(-1, 1, n1, n2)
        if self.a_first:
            # Z_r = A_r X, then Y = [Z_1 ... Z_R] [B_1^T; ...; B_R^T]: one MatMul each.
            z = torch.matmul(self.a, x).permute(0, 2, 1, 3).reshape(-1, m1, rank * n2)
            y = torch.matmul(z, self.b.transpose(1, 2).reshape(rank * n2, m2))
        else:
            # Z_r = X B_r^T, then Y = [A_1 ... A_R] [Z_1; ...; Z_R].
            z = torch.matmul(x, self.b.transpose(1, 2)).reshape(-1, rank * n1, m2)
            y = torch.matmul(self.a.permute(1, 0, 2).reshape(m1, rank * n1), z)
        y = y.reshape(*lead, m1 * m2)  # Y (m1 x m2) flattened row-major
        return y if self.bias is None else y + self.bias

    @property
    def macs(self) -> int:
        """MACs per input row, in the cheaper of the two orders the forward can take:
        R*n1*m2*(n2 + m1) (X B^T first) or R*m1*n2*(n1 + m2) (A X first)."""
        return kronecker_macs(self.shape, self.rank)

    @property
    def params(self) -> int:
        """Parameters, bias included: R*(m1*n1 + m2*n2) + m."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (m, n) weight this module computes: sum_r kron(A_r, B_r)."""
        m1, m2, n1, n2 = self.shape
        dense = torch.einsum("rac,rbd->abcd", self.a, self.b)
        return dense.reshape(m1 * m2, n1 * n2)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + (
            f"shape={self.shape}, rank={self.rank}, bias={self.bias is not None}"
        )


def _near_sqrt_split(n: int) -> tuple[int, int]:
    """(d, n // d) with d the largest divisor of n that is <= sqrt(n)."""
    d = math.isqrt(n)
    while n % d:
        d -= 1
    return d, n // d


def _check_shape(weight: torch.Tensor, shape) -> Shape4:
    if weight.dim() != 2:
        raise InvalidInputError(f"expected a 2-D Linear weight, got shape {tuple(weight.shape)}")
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise InvalidInputError(f"shape must be four positive ints (m1, m2, n1, n2), got {shape}")
    m1, m2, n1, n2 = shape
    if (m1 * m2, n1 * n2) != tuple(weight.shape):
        raise InvalidInputError(
            f"shape {shape} gives a {m1 * m2} x {n1 * n2} weight, but the Linear's is "
            f"{weight.shape[0]} x {weight.shape[1]}: need m1*m2 = out and n1*n2 = in features"
        )
    if not torch.isfinite(weight).all():
        raise InvalidInputError("Linear weight contains NaN or Inf")
    return shape
