"""Kronecker-factored Linear layers: nearest Kronecker approximation, shapes, module, ONNX."""

from __future__ import annotations

import pytest
import torch
from _lowrank import (
    images,
    onnx_roundtrip,
    relative_gap,
    single_thread,  # noqa: F401 (an autouse fixture: importing it applies it)
)
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.lowrank import (
    KroneckerLinear,
    kronecker_factors,
    kronecker_macs,
    kronecker_shape,
)
from gdws_export.lowrank.kronecker import rearrange

SHAPES = [(2, 5, 16, 4), (3, 4, 5, 6), (10, 10, 8, 8), (1, 7, 1, 13), (4, 1, 6, 2)]


def _linear(shape, bias=True) -> nn.Linear:
    m1, m2, n1, n2 = shape
    torch.manual_seed(0)
    return nn.Linear(n1 * n2, m1 * m2, bias=bias).double()


def test_shapes_follow_the_activation_or_split_near_square_roots():
    assert kronecker_shape(10, 512 * 4, activation=(512, 2, 2)) == (2, 5, 512, 4)
    assert kronecker_shape(10, 64 * 16, activation=(64, 4, 4)) == (2, 5, 64, 16)
    assert kronecker_shape(10, 512, activation=(512, 1, 1)) == (2, 5, 16, 32)  # no pixels
    assert kronecker_shape(100, 64) == (10, 10, 8, 8)
    assert kronecker_shape(7, 13) == (1, 7, 1, 13)  # primes: nothing to split
    assert kronecker_shape(12, 30) == (3, 4, 5, 6)
    with pytest.raises(InvalidInputError, match="does not flatten"):
        kronecker_shape(10, 100, activation=(3, 4, 4))


def test_rearrangement_maps_a_kronecker_product_to_an_outer_product():
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    r = rearrange(torch.kron(a, b), (3, 4, 5, 6))
    assert torch.allclose(r, a.reshape(-1, 1) * b.reshape(1, -1))


@pytest.mark.parametrize("shape", SHAPES)
def test_full_rank_reproduces_the_layer_bias_kept(shape):
    linear = _linear(shape)
    rank = min(shape[0] * shape[2], shape[1] * shape[3])
    kron = KroneckerLinear.from_linear(linear, rank, shape)
    x = torch.randn(2, 3, linear.in_features, dtype=torch.float64)
    assert torch.allclose(kron(x), linear(x), atol=1e-12)
    assert torch.allclose(kron.dense_weight(), linear.weight, atol=1e-12)
    assert torch.equal(kron.bias, linear.bias)
    assert kron.weighted_error < 1e-20 + 1e-12 * float(linear.weight.detach().pow(2).sum())


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_error_is_the_discarded_singular_values(shape):
    linear = _linear(shape, bias=False)
    _, _, s = kronecker_factors(linear.weight, shape)
    x = torch.randn(5, linear.in_features, dtype=torch.float64)
    for rank in range(1, len(s) + 1):
        kron = KroneckerLinear.from_linear(linear, rank, shape)
        error = float((kron.dense_weight() - linear.weight.detach()).pow(2).sum())
        assert error == pytest.approx(float(s[rank:].pow(2).sum()), rel=1e-9, abs=1e-12)
        assert kron.weighted_error == pytest.approx(error, rel=1e-9, abs=1e-12)
        assert torch.allclose(kron(x), x @ kron.dense_weight().T, atol=1e-12)


def test_both_forward_orders_compute_the_same_and_the_cheaper_runs():
    linear = _linear((2, 5, 16, 4))
    kron = KroneckerLinear.from_linear(linear, 3, (2, 5, 16, 4))
    x = torch.randn(4, 64, dtype=torch.float64)
    first = kron(x)
    kron.a_first = not kron.a_first
    assert torch.allclose(kron(x), first, atol=1e-12)
    m1, m2, n1, n2 = kron.shape
    assert (
        kron.macs
        == 3 * min(n1 * m2 * (n2 + m1), m1 * n2 * (n1 + m2))
        == kronecker_macs(kron.shape, 3)
    )


def test_parameter_count_and_unflattened_input():
    linear = _linear((2, 5, 8, 9))
    kron = KroneckerLinear.from_linear(linear, 2, kronecker_shape(10, 72, activation=(8, 3, 3)))
    assert kron.params == 2 * (2 * 8 + 5 * 9) + 10
    activation = torch.randn(3, 8, 3, 3, dtype=torch.float64)  # channels pair with A, pixels B
    x = activation.reshape(3, 8, 9)
    want = sum(a @ x @ b.T for a, b in zip(kron.a, kron.b, strict=True)).reshape(3, 10)
    assert torch.allclose(kron(activation.flatten(1)), want + kron.bias, atol=1e-12)


def test_bad_arguments_are_refused():
    linear = _linear((2, 5, 8, 9))
    with pytest.raises(InvalidInputError, match="m1\\*m2"):
        KroneckerLinear.from_linear(linear, 1, (2, 5, 9, 9))
    with pytest.raises(InvalidInputError, match="rank"):
        KroneckerLinear.from_linear(linear, 0, (2, 5, 8, 9))
    with pytest.raises(InvalidInputError, match="nn.Linear"):
        KroneckerLinear.from_linear(nn.Conv2d(1, 1, 1), 1)


def test_from_linear_keeps_dtype_mode_and_no_grad():
    linear = nn.Linear(64, 100).train(False)
    kron = KroneckerLinear.from_linear(linear, 4)
    assert kron.shape == (10, 10, 8, 8) and kron.a.dtype == torch.float32
    assert not kron.training and kron.a.grad_fn is None and kron.a.requires_grad


def test_exports_to_plain_matmul_nodes():
    torch.manual_seed(0)
    linear = nn.Linear(4 * 7 * 7, 10).eval()
    x = images(6, channels=4, size=7).flatten(1)
    shape = kronecker_shape(10, 4 * 7 * 7, activation=(4, 7, 7))
    for order in (True, False):
        kron = KroneckerLinear.from_linear(linear, 2, shape).eval()
        kron.a_first = order
        got, ops = onnx_roundtrip(kron, x)
        assert relative_gap(got, kron(x).detach()) <= 1e-4
        assert "MatMul" in ops and "Gemm" not in ops
        assert ops <= {"MatMul", "Reshape", "Transpose", "Add", "Constant", "Shape", "Gather",
                       "Concat", "Unsqueeze", "Slice", "Squeeze"}  # fmt: skip
