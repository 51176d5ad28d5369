"""`attack_copy`: the same function and input gradients as the model, BatchNorms folded where
that is safe, the model itself untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdws_export import approximate, create_model
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.harness.attack_copy import attack_copy
from tests._lowering_nets import randomize_batchnorm

WIDTHS = {"vgg16_bn": 4, "preact_resnet18": 4, "wrn28_4": 2}


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _output_and_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return logits.detach(), grad


def _assert_same_function(model: nn.Module, copied: nn.Module, shape=(1, 28, 28)) -> None:
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    logits, grad = _output_and_input_gradient(model, x, y)
    copy_logits, copy_grad = _output_and_input_gradient(copied, x, y)
    torch.testing.assert_close(copy_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(copy_grad, grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(WIDTHS))
def test_a_gdws_model_keeps_its_function_and_loses_the_foldable_batchnorms(arch):
    torch.manual_seed(0)
    base = randomize_batchnorm(create_model(arch, in_channels=1, input_size=28, width=WIDTHS[arch]))
    model, _ = approximate(base, mac_ratio=0.5, input_shape=(1, 28, 28))
    model.eval()
    before = copy.deepcopy(model.state_dict())

    copied = attack_copy(model)

    _assert_same_function(model, copied)
    assert not any(isinstance(m, GDWSConv2d) for m in copied.modules())
    assert not any(p.requires_grad for p in copied.parameters())
    assert not any(m.training for m in copied.modules())
    if arch == "vgg16_bn":  # every BatchNorm reads a conv that feeds nothing else
        assert _batchnorms(copied) == 0
    else:  # pre-activation blocks: the BatchNorm after the residual sum stays
        assert 0 < _batchnorms(copied) < _batchnorms(model)
    # The model itself is untouched: still GDWS, same weights, BatchNorms in place.
    assert any(isinstance(m, GDWSConv2d) for m in model.modules())
    assert _batchnorms(model) == _batchnorms(base)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _Branchy(nn.Module):
    """A forward torch.fx cannot trace (it branches on the data)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        h = self.bn(self.conv(x))
        h = h.relu() if h.sum() > 0 else -h
        return self.head(h.mean((2, 3)))


class _Shared(nn.Module):
    """One conv called twice: folding the BatchNorm after one call would change the other."""

    def __init__(self, track: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=track)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        h = self.bn(self.stem(x))
        h = self.conv(self.conv(h))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize(
    "model, kept",
    [
        (_Branchy(), 1),  # not traceable: returned as it is
        (_Shared(), 0),  # the stem's BatchNorm folds; the shared conv has none after it
        (_Shared(track=False), 1),  # batch statistics even in eval mode: cannot fold
    ],
    ids=["untraceable", "shared-conv", "no-running-stats"],
)
def test_batchnorms_are_folded_only_where_the_function_stays_the_same(model, kept):
    model = randomize_batchnorm(model) if kept == 0 else model.eval()
    copied = attack_copy(model)
    _assert_same_function(model, copied)
    assert _batchnorms(copied) == kept


def test_a_batchnorm_after_a_conv_called_twice_is_not_folded():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)
            self.head = nn.Linear(1, 10)

        def forward(self, x):
            return self.head((self.bn(self.conv(x)) + self.conv(x)).mean((2, 3)))

    model = randomize_batchnorm(Twice())
    copied = attack_copy(model)
    _assert_same_function(model, copied)
    assert _batchnorms(copied) == 1
