"""`GDWSConv2d`: a generalized depthwise-separable replacement for one `nn.Conv2d`.

The module runs three steps:

1. gather: input channel c is repeated g_c times (`channel_index`, skipped when every g_c is 1);
2. GDW stage: a depthwise conv with one Kh x Kw kernel per repeated channel, which keeps the
   original conv's stride, padding (including 'same' and non-zero padding modes) and dilation;
3. PW stage: a 1x1 conv from the G = sum_c g_c intermediate channels to the M outputs, holding
   the original bias.

Kernel k of channel c is the k-th right singular vector of c's weight block, and its PW column
is the matching left singular vector times the singular value (see `decomposition`). Grouped
convs are decomposed group by group: each group's kernels feed only its own outputs, through a
grouped PW conv. Groups that keep fewer kernels than the largest group are padded with zero
kernels, because a grouped conv needs equal group sizes; those padding kernels are counted in
`macs_per_pixel`, since they run.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.decomposition import (
    channel_svd,
    error_values,
    lego,
    mego,
    weighted_error,
)


def conv_macs_per_pixel(conv: nn.Conv2d) -> int:
    """Multiply-accumulates of a conv per output pixel: M * (C/groups) * Kh * Kw."""
    kh, kw = conv.kernel_size
    return conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A conv with one input channel per group, which GDWS cannot make any cheaper."""
    return conv.groups > 1 and conv.groups == conv.in_channels


class GDWSConv2d(nn.Module):
    """A GDWS conv: per-channel-multiplicity depthwise conv followed by a 1x1 conv.

    Build one with `GDWSConv2d.from_conv`. Attributes a user reads:

    - `kernels_per_channel`: (C,) int64, the number of GDW kernels g_c of each input channel;
    - `kernels`: G = sum_c g_c;
    - `macs_per_pixel`: MACs per output pixel of the GDW and PW stages together;
    - `weighted_error`: sum_c alpha_c * ||W_c - W_c_hat||_F^2 of the approximation it holds.

    Example:
        >>> conv = nn.Conv2d(16, 32, 3, padding=1)
        >>> gdws = GDWSConv2d.from_conv(conv, beta=0.0)   # full rank: same outputs
        >>> gdws.kernels_per_channel.max().item() <= 9
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        channel_index: torch.Tensor,
        kernels_per_channel: torch.Tensor,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: str | tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        weighted_error: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        width = channel_index.numel()  # kernels that run, padding kernels included
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)
        self.groups = groups
        self.weighted_error = float(weighted_error)
        self.register_buffer("channel_index", channel_index.to(device=device, dtype=torch.long))
        self.register_buffer(
            "kernels_per_channel", kernels_per_channel.to(device=device, dtype=torch.long)
        )
        # The gather is the identity when every channel keeps exactly one kernel in order.
        self._gather = not torch.equal(channel_index.cpu(), torch.arange(in_channels))
        self.depthwise = nn.Conv2d(
            width, width, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=width, bias=False, padding_mode=padding_mode, device=device, dtype=dtype,
        )  # fmt: skip
        self.pointwise = nn.Conv2d(
            width, out_channels, 1, groups=groups, bias=bias, device=device, dtype=dtype
        )

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        beta: float | None = None,
        max_kernels: int | None = None,
        kernels_per_channel: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
    ) -> GDWSConv2d:
        """Approximate `conv` by the optimal GDWS conv under one constraint.

        Args:
            conv: any `nn.Conv2d` except a depthwise one (groups == in_channels).
            beta: LEGO: fewest kernels whose weighted error is <= beta.
            max_kernels: MEGO: least weighted error with at most this many kernels.
            kernels_per_channel: use these counts g_c directly (a network-level allocation).
            alpha: (C,) per-input-channel error weights; None means all ones.

        Exactly one of `beta`, `max_kernels`, `kernels_per_channel` must be given. At least
        one kernel is always kept, so the layer stays a conv. `beta=0` gives an exact
        decomposition (up to float32 round-off).
        """
        chosen = [x is not None for x in (beta, max_kernels, kernels_per_channel)]
        if sum(chosen) != 1:
            raise InvalidInputError(
                "give exactly one of beta (LEGO), max_kernels (MEGO) or kernels_per_channel"
            )
        if not isinstance(conv, nn.Conv2d):
            raise InvalidInputError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if is_depthwise(conv):
            raise InvalidInputError(
                "depthwise conv (groups == in_channels) is already minimal; leave it as it is"
            )
        svd = channel_svd(conv.weight, conv.groups)
        values = error_values(svd, alpha)
        if beta is not None:
            counts = lego(values, beta)
        elif max_kernels is not None:
            counts = mego(values, max_kernels)
        else:
            counts = _check_counts(kernels_per_channel, conv.in_channels, svd.rank)
        return cls._build(conv, svd, counts, weighted_error(values, counts))

    @classmethod
    @torch.no_grad()
    def _build(cls, conv: nn.Conv2d, svd, counts: torch.Tensor, error: float) -> GDWSConv2d:
        channels, groups = conv.in_channels, conv.groups
        c_per_group, m_per_group = channels // groups, conv.out_channels // groups
        kh, kw = conv.kernel_size
        # Kept triplets (c, i), sorted by channel, then by singular value.
        keep = torch.arange(svd.rank)[None, :] < counts[:, None]
        chan, idx = keep.nonzero(as_tuple=True)
        dw = svd.vh[chan, idx]  # (G, K)
        pw = svd.u[chan, :, idx] * svd.s[chan, idx][:, None]  # (G, M/groups)

        # Pad every group to the same number of kernels with zero kernels (see module doc).
        group_of = chan // c_per_group
        per_group = torch.bincount(group_of, minlength=groups)
        width = int(per_group.max())
        slot = torch.arange(chan.numel()) - (torch.cumsum(per_group, 0) - per_group)[group_of]
        position = group_of * width + slot
        channel_index = torch.arange(groups).repeat_interleave(width) * c_per_group
        channel_index[position] = chan
        dw_weight = torch.zeros(groups * width, kh * kw, dtype=torch.float64)
        dw_weight[position] = dw
        pw_weight = torch.zeros(groups, m_per_group, width, dtype=torch.float64)
        pw_weight[group_of, :, slot] = pw

        module = cls(
            channels, conv.out_channels, (kh, kw), channel_index, counts,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode, weighted_error=error,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        dtype = conv.weight.dtype
        module.depthwise.weight.copy_(dw_weight.reshape(-1, 1, kh, kw).to(dtype))
        module.pointwise.weight.copy_(pw_weight.reshape(conv.out_channels, width, 1, 1).to(dtype))
        if conv.bias is not None:
            module.pointwise.bias.copy_(conv.bias)
        return module

    @property
    def kernels(self) -> int:
        """G: the number of GDW kernels kept (padding kernels of grouped convs not counted)."""
        return int(self.kernels_per_channel.sum())

    @property
    def macs_per_pixel(self) -> int:
        """MACs per output pixel of what runs: width * (Kh*Kw + M/groups)."""
        kh, kw = self.kernel_size
        return self.depthwise.out_channels * (kh * kw + self.out_channels // self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.kernel_outputs(x))

    def kernel_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The GDW stage's output: one channel per kernel (padding kernels included), the
        features the 1x1 conv combines."""
        if self._gather:
            x = x.index_select(1, self.channel_index)
        return self.depthwise(x)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (M, C/groups, Kh, Kw) conv weight this module computes: the sum over kernels of
        their PW column times the kernel, at their channel."""
        kh, kw = self.kernel_size
        width, groups = self.depthwise.out_channels, self.groups
        m_per_group, c_per_group = self.out_channels // groups, self.in_channels // groups
        per_group = width // groups
        slot = torch.arange(width, device=self.channel_index.device)
        pw = self.pointwise.weight.reshape(groups, m_per_group, per_group)
        columns = pw[slot // per_group, :, slot % per_group]  # (width, M/groups)
        products = columns[:, :, None] * self.depthwise.weight.reshape(width, 1, kh * kw)
        dense = products.new_zeros(groups, c_per_group, m_per_group, kh * kw)
        index = (self.channel_index // c_per_group, self.channel_index % c_per_group)
        dense.index_put_(index, products, accumulate=True)
        return dense.permute(0, 2, 1, 3).reshape(self.out_channels, c_per_group, kh, kw)

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """An ordinary conv computing exactly what this module computes.

        PyTorch's CPU depthwise kernels are slow, so evaluating a GDWS model in PyTorch (attacks,
        calibration) is faster with its layers made dense; deployment speed is the engine's.
        """
        dw = self.depthwise
        conv = skip_init(
            nn.Conv2d, self.in_channels, self.out_channels, self.kernel_size, stride=dw.stride,
            padding=dw.padding, dilation=dw.dilation, groups=self.groups,
            bias=self.pointwise.bias is not None, padding_mode=dw.padding_mode,
            device=dw.weight.device, dtype=dw.weight.dtype,
        )  # fmt: skip
        conv.weight.copy_(self.dense_weight())
        if conv.bias is not None:
            conv.bias.copy_(self.pointwise.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"kernels={self.kernels}, groups={self.groups}, stride={self.depthwise.stride}, "
            f"padding={self.depthwise.padding}, dilation={self.depthwise.dilation}, "
            f"padding_mode={self.depthwise.padding_mode!r}"
        )


def _check_counts(counts: torch.Tensor, channels: int, rank: int) -> torch.Tensor:
    counts = torch.as_tensor(counts).to(torch.long).reshape(-1).cpu()
    if counts.numel() != channels:
        raise InvalidInputError(
            f"kernels_per_channel has {counts.numel()} entries, expected {channels}"
        )
    if (counts < 0).any() or (counts > rank).any() or counts.sum() < 1:
        raise InvalidInputError(
            f"kernels_per_channel must lie in [0, {rank}] and keep at least one kernel"
        )
    return counts


__all__ = ["GDWSConv2d", "conv_macs_per_pixel", "is_depthwise"]
