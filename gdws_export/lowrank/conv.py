"""`Tucker2Conv2d` and `LowRankConv2d`: a KxK conv as a chain of smaller plain convs.

- `Tucker2Conv2d`: 1x1 (C -> g*r_in), KxK core (g*r_in -> g*r_out), 1x1 (g*r_out -> M).
- `LowRankConv2d`: KxK (C -> g*r), 1x1 (g*r -> M).

The KxK stage keeps the original stride, padding (ints, tuples, 'same', 'valid'), dilation and
padding mode. That is exact because a 1x1 conv without bias mixes channels pixel by pixel:
it commutes with zero, reflect and circular padding, which only move or zero whole pixels.
The bias goes on the last 1x1. Grouped convs are factored group by group, with the same ranks
in every group, as grouped convs (g = groups); depthwise convs (one input channel per group)
have nothing to factor and are refused.

Every stage is an `nn.Conv2d`, so both modules export to plain ONNX Conv nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.conv import is_depthwise
from gdws_export.lowrank.factors import (
    LowRankFactors,
    Tucker2Factors,
    lowrank_factors,
    tucker2_factors,
)


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about an `nn.Conv2d` except its weights.

    Example:
        >>> ConvGeometry.of(nn.Conv2d(8, 16, 3, stride=2)).stride
        (2, 2)
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: str | tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        """The geometry of `conv` (every tuple copied whole, both axes)."""
        if not isinstance(conv, nn.Conv2d):
            raise InvalidInputError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        return cls(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            padding=padding,
            dilation=tuple(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )

    def spatial(self, in_channels: int, out_channels: int, **factory) -> nn.Conv2d:
        """The KxK stage: this geometry's kernel, stride, padding and dilation, `groups`
        groups, no bias, between the given channel counts."""
        return nn.Conv2d(
            in_channels, out_channels, self.kernel_size, stride=self.stride,
            padding=self.padding, dilation=self.dilation, groups=self.groups, bias=False,
            padding_mode=self.padding_mode, **factory,
        )  # fmt: skip

    def pointwise(self, in_channels: int, out_channels: int, bias: bool, **factory) -> nn.Conv2d:
        """A grouped 1x1 stage between the given channel counts."""
        return nn.Conv2d(in_channels, out_channels, 1, groups=self.groups, bias=bias, **factory)

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]


def tucker2_macs(
    geometry: ConvGeometry, ranks: tuple[int, int], in_pixels: int, out_pixels: int
) -> int:
    """MACs of a Tucker-2 conv for one image. The first 1x1 runs on the input's pixels (before
    the stride), the core and the last 1x1 on the output's; works on tensors of ranks too."""
    r_out, r_in = ranks
    g, taps = geometry.groups, geometry.taps
    return in_pixels * geometry.in_channels * r_in + out_pixels * (
        g * r_out * r_in * taps + r_out * geometry.out_channels
    )


def lowrank_macs(geometry: ConvGeometry, rank: int, out_pixels: int) -> int:
    """MACs of a two-factor conv for one image: r * (C*Kh*Kw + M) per output pixel."""
    return out_pixels * rank * (geometry.in_channels * geometry.taps + geometry.out_channels)


def conv_macs(geometry: ConvGeometry, out_pixels: int) -> int:
    """MACs of the original conv for one image: M * C/g * Kh*Kw per output pixel."""
    c_per_group = geometry.in_channels // geometry.groups
    return out_pixels * geometry.out_channels * c_per_group * geometry.taps


class Tucker2Conv2d(nn.Module):
    """A KxK conv as 1x1 (C -> g*r_in), KxK core (g*r_in -> g*r_out), 1x1 (g*r_out -> M).

    Build one from a conv with `Tucker2Conv2d.from_conv(conv, (r_out, r_in))`; the empty
    constructor takes the conv's `ConvGeometry` (to load a state dict into).

    Example:
        >>> conv = nn.Conv2d(16, 32, 3, padding=1)
        >>> t = Tucker2Conv2d.from_conv(conv, (32, 16))   # full ranks: the same outputs
        >>> x = torch.randn(1, 16, 8, 8)
        >>> torch.allclose(t(x), conv(x), atol=1e-5)
        True
    """

    def __init__(
        self,
        geometry: ConvGeometry,
        ranks: tuple[int, int],
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        r_out, r_in = ranks = _check_ranks(geometry, ranks)
        g = geometry.groups
        factory = {"device": device, "dtype": dtype}
        self.geometry = geometry
        self.ranks = ranks
        self.weighted_error = 0.0
        self.reduce = geometry.pointwise(geometry.in_channels, g * r_in, False, **factory)
        self.core = geometry.spatial(g * r_in, g * r_out, **factory)
        self.restore = geometry.pointwise(g * r_out, geometry.out_channels, geometry.bias,
                                          **factory)  # fmt: skip

    @classmethod
    @torch.no_grad()
    def from_conv(
        cls,
        conv: nn.Conv2d,
        ranks: tuple[int, int],
        *,
        alpha: torch.Tensor | None = None,
        factors: Tucker2Factors | None = None,
    ) -> Tucker2Conv2d:
        """The HOSVD Tucker-2 approximation of `conv` with ranks (r_out, r_in).

        Args:
            conv: a KxK `nn.Conv2d`, not depthwise.
            ranks: (r_out, r_in), at most `tucker2_factors(...).max_ranks` (which is exact).
            alpha: (C,) per-input-channel sensitivities; None means unweighted.
            factors: `tucker2_factors` of this conv, when already computed (`alpha` unused).
        """
        geometry = _checked_geometry(conv)
        if factors is None:
            factors = tucker2_factors(conv.weight, conv.groups, alpha)
        ranks = _check_max(_check_ranks(geometry, ranks), factors.max_ranks, "(r_out, r_in)")
        module = cls(geometry, ranks, device=conv.weight.device, dtype=conv.weight.dtype)
        for stage, weight in zip(
            (module.reduce, module.core, module.restore), factors.weights(ranks), strict=True
        ):
            stage.weight.copy_(weight)
        if conv.bias is not None:
            module.restore.bias.copy_(conv.bias)
        module.weighted_error = float(factors.errors()[ranks[0] - 1, ranks[1] - 1])
        return module.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(self.core(self.reduce(x)))

    def macs(self, in_pixels: int, out_pixels: int) -> int:
        """MACs for one image whose conv input has `in_pixels` and output `out_pixels`."""
        return tucker2_macs(self.geometry, self.ranks, in_pixels, out_pixels)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (M, C/g, Kh, Kw) conv weight this module computes."""
        g, (r_out, r_in) = self.geometry.groups, self.ranks
        kh, kw = self.geometry.kernel_size
        first = self.reduce.weight.reshape(g, r_in, -1)
        core = self.core.weight.reshape(g, r_out, r_in, kh * kw)
        last = self.restore.weight.reshape(g, -1, r_out)
        dense = torch.einsum("gmo,goik,gic->gmck", last, core, first)
        return dense.reshape(self.geometry.out_channels, -1, kh, kw)

    def extra_repr(self) -> str:
        return f"{self.geometry.in_channels}, {self.geometry.out_channels}, ranks={self.ranks}"


class LowRankConv2d(nn.Module):
    """A KxK conv as KxK (C -> g*r) then 1x1 (g*r -> M): the truncated SVD of its
    M x (C*Kh*Kw) matricization.

    Example:
        >>> conv = nn.Conv2d(16, 32, 3, padding=1)
        >>> low = LowRankConv2d.from_conv(conv, 8)
        >>> low.macs(64, 64) < 32 * 16 * 9 * 64
        True
    """

    def __init__(
        self,
        geometry: ConvGeometry,
        rank: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        c_per_group = geometry.in_channels // geometry.groups
        limit = min(geometry.out_channels // geometry.groups, c_per_group * geometry.taps)
        (rank,) = _check_max((rank,), (limit,), "rank")
        factory = {"device": device, "dtype": dtype}
        self.geometry = geometry
        self.rank = rank
        self.weighted_error = 0.0
        self.core = geometry.spatial(geometry.in_channels, geometry.groups * rank, **factory)
        self.restore = geometry.pointwise(geometry.groups * rank, geometry.out_channels,
                                          geometry.bias, **factory)  # fmt: skip

    @classmethod
    @torch.no_grad()
    def from_conv(
        cls,
        conv: nn.Conv2d,
        rank: int,
        *,
        alpha: torch.Tensor | None = None,
        factors: LowRankFactors | None = None,
    ) -> LowRankConv2d:
        """The best rank-r two-factor approximation of `conv` (Eckart-Young).

        Args:
            conv: a KxK `nn.Conv2d`, not depthwise.
            rank: r per group, at most min(M/g, C/g*Kh*Kw) (which is exact).
            alpha: (C,) per-input-channel sensitivities; None means unweighted.
            factors: `lowrank_factors` of this conv, when already computed (`alpha` unused).
        """
        geometry = _checked_geometry(conv)
        if factors is None:
            factors = lowrank_factors(conv.weight, conv.groups, alpha)
        module = cls(geometry, rank, device=conv.weight.device, dtype=conv.weight.dtype)
        spatial, pointwise = factors.weights(module.rank)
        module.core.weight.copy_(spatial)
        module.restore.weight.copy_(pointwise)
        if conv.bias is not None:
            module.restore.bias.copy_(conv.bias)
        module.weighted_error = float(factors.errors()[module.rank - 1])
        return module.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(self.core(x))

    def macs(self, in_pixels: int, out_pixels: int) -> int:
        """MACs for one image (`in_pixels` is unused: both stages run at the output size)."""
        return lowrank_macs(self.geometry, self.rank, out_pixels)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (M, C/g, Kh, Kw) conv weight this module computes."""
        g, r = self.geometry.groups, self.rank
        kh, kw = self.geometry.kernel_size
        spatial = self.core.weight.reshape(g, r, -1)
        last = self.restore.weight.reshape(g, -1, r)
        dense = torch.bmm(last, spatial)
        return dense.reshape(self.geometry.out_channels, -1, kh, kw)

    def extra_repr(self) -> str:
        return f"{self.geometry.in_channels}, {self.geometry.out_channels}, rank={self.rank}"


def _checked_geometry(conv: nn.Conv2d) -> ConvGeometry:
    geometry = ConvGeometry.of(conv)
    if is_depthwise(conv):
        raise InvalidInputError(
            "depthwise conv (groups == in_channels) has one input channel per group: nothing "
            "to factor; leave it as it is"
        )
    return geometry


def _check_ranks(geometry: ConvGeometry, ranks) -> tuple[int, int]:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise InvalidInputError(f"ranks must be a pair (r_out, r_in), got {ranks!r}")
    g = geometry.groups
    limits = (geometry.out_channels // g, geometry.in_channels // g)
    return _check_max(ranks, limits, "(r_out, r_in)")


def _check_max(values, limits, what: str) -> tuple[int, ...]:
    """`values` as ints in [1, limit] each, or an error saying the allowed range."""
    values = tuple(values)
    ok = len(values) == len(limits) and all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit
        for v, limit in zip(values, limits, strict=False)
    )
    if not ok:
        shown = values[0] if len(values) == 1 else values
        raise InvalidInputError(
            f"{what} must be ints in [1, {limits[0] if len(limits) == 1 else limits}] per "
            f"group (the upper end is exact), got {shown!r}"
        )
    return values
