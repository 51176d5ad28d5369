"""MEGO and LEGO against brute force, and the error identity they rely on."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gdws_export.gdws.decomposition import (
    channel_blocks,
    channel_svd,
    error_values,
    lego,
    mego,
    weighted_error,
)


def _tiny_layer(seed: int, groups: int = 1):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(2 * groups, 3, 2, 2, generator=gen)  # M/g = 2 < K = 4: rank 2
    alpha = torch.rand(3 * groups, generator=gen, dtype=torch.float64) + 0.1
    return weight, alpha


def _all_choices(channels: int, rank: int):
    return [torch.tensor(c) for c in itertools.product(range(rank + 1), repeat=channels)]


@pytest.mark.parametrize("seed", range(4))
def test_mego_is_optimal_against_brute_force(seed):
    weight, alpha = _tiny_layer(seed)
    values = error_values(channel_svd(weight), alpha)
    choices = _all_choices(3, 2)
    for budget in range(1, 7):
        best = min(weighted_error(values, c) for c in choices if 1 <= c.sum() <= budget)
        counts = mego(values, budget)
        assert counts.sum() <= budget
        assert weighted_error(values, counts) == pytest.approx(best, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_lego_is_minimal_against_brute_force(seed):
    weight, alpha = _tiny_layer(seed)
    values = error_values(channel_svd(weight), alpha)
    total = float(values.sum())
    choices = _all_choices(3, 2)
    for beta in [0.0, 0.01 * total, 0.1 * total, 0.3 * total, 0.7 * total, 2 * total]:
        fewest = min(
            int(c.sum()) for c in choices if c.sum() >= 1 and weighted_error(values, c) <= beta
        )
        counts = lego(values, beta)
        assert int(counts.sum()) == fewest
        assert weighted_error(values, counts) <= beta


def test_lego_error_never_exceeds_beta():
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        m, c = (
            int(torch.randint(1, 20, (1,), generator=gen)),
            int(torch.randint(1, 12, (1,), generator=gen)),
        )
        weight = torch.randn(m, c, 3, 3, generator=gen)
        alpha = torch.rand(c, generator=gen, dtype=torch.float64)
        values = error_values(channel_svd(weight), alpha)
        beta = float(torch.rand(1, generator=gen)) * float(values.sum())
        counts = lego(values, beta)
        assert weighted_error(values, counts) <= beta + 1e-12
        assert counts.sum() >= 1
        assert (counts <= min(m, 9)).all()


def test_reported_error_is_the_weighted_frobenius_error():
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    alpha = torch.tensor([0.5, 2.0, 1.0, 0.1], dtype=torch.float64)
    svd = channel_svd(weight)
    values = error_values(svd, alpha)
    counts = torch.tensor([1, 0, 3, 2])
    keep = torch.arange(svd.rank)[None, :] < counts[:, None]
    approx = torch.einsum("cmr,cr,crk->cmk", svd.u, svd.s * keep, svd.vh)
    blocks = channel_blocks(weight)
    direct = float((alpha[:, None, None] * (blocks - approx) ** 2).sum())
    assert weighted_error(values, counts) == pytest.approx(direct, rel=1e-10)


def test_channel_svd_rank_is_min_of_outputs_and_taps():
    assert channel_svd(torch.randn(4, 3, 3, 3)).rank == 4  # M < K
    assert channel_svd(torch.randn(16, 3, 3, 3)).rank == 9
    assert channel_svd(torch.randn(16, 3, 1, 5)).rank == 5
    assert channel_svd(torch.randn(8, 2, 3, 3), groups=4).rank == 2  # M/groups = 2


def test_grouped_blocks_only_hold_their_groups_outputs():
    weight = torch.arange(4 * 2 * 1 * 1, dtype=torch.float64).reshape(4, 2, 1, 1)
    blocks = channel_blocks(weight, groups=2)  # channels 0,1 -> outputs 0,1; channels 2,3 -> 2,3
    assert blocks.shape == (4, 2, 1)
    assert blocks[:, :, 0].tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_zero_alpha_channels_are_dropped_and_zero_values_are_not_kept():
    weight = torch.randn(6, 3, 3, 3)
    alpha = torch.tensor([1.0, 0.0, 1.0])
    counts = mego(error_values(channel_svd(weight), alpha), 100)
    assert counts[1] == 0 and counts[0] == 6 and counts[2] == 6


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "1", True])
def test_bad_beta_is_a_value_error(bad):
    values = error_values(channel_svd(torch.randn(4, 2, 3, 3)))
    with pytest.raises(ValueError, match="beta"):
        lego(values, bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_budget_is_a_value_error(bad):
    values = error_values(channel_svd(torch.randn(4, 2, 3, 3)))
    with pytest.raises(ValueError, match="max_kernels"):
        mego(values, bad)


@pytest.mark.parametrize(
    "alpha, message",
    [(torch.ones(3), "expected one per input channel"), (torch.tensor([1.0, -1.0]), "negative"),
     (torch.tensor([1.0, math.nan]), "NaN")],
)  # fmt: skip
def test_bad_alpha_is_a_value_error(alpha, message):
    with pytest.raises(ValueError, match=message):
        error_values(channel_svd(torch.randn(4, 2, 3, 3)), alpha)


def test_nan_weights_are_a_value_error():
    weight = torch.randn(4, 2, 3, 3)
    weight[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        channel_svd(weight)
