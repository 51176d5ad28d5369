"""Layer-calibrated alphas: measured across layers, in units of output change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdws_export.gdws.approximate import approximate
from gdws_export.gdws.calibration import calibrated_gains


class TwoBranches(nn.Module):
    """Branch `loud` reaches the logits at full strength, branch `quiet` 100x weaker."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.loud = nn.Conv2d(8, 8, 3, padding=1)
        self.quiet = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        y = torch.relu(self.loud(h)) + 0.01 * torch.relu(self.quiet(h))
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture
def data():
    torch.manual_seed(0)
    return torch.rand(32, 1, 10, 10), torch.randint(0, 4, (32,))


def test_a_weaker_path_gets_a_smaller_scale(data):
    torch.manual_seed(0)
    model = TwoBranches().eval()
    with torch.no_grad():
        model.quiet.weight.copy_(model.loud.weight)  # same weights, same errors
    gains = calibrated_gains(model, data, attack=None, samples=32)
    assert gains.keys() == {"loud", "quiet"}
    loud, quiet = float(gains["loud"].mean()), float(gains["quiet"].mean())
    assert loud > 0 and quiet >= 0
    assert quiet < loud / 100  # KL is second order: about 1e-4 of the loud branch's


def test_the_scale_does_not_depend_on_the_units_of_the_base_alphas(data):
    model = TwoBranches().eval()
    base = {"loud": torch.rand(8) + 0.5, "quiet": torch.rand(8) + 0.5}
    once = calibrated_gains(model, data, attack=None, base=base, samples=32)
    doubled = calibrated_gains(
        model, data, attack=None, base={k: 2 * v for k, v in base.items()}, samples=32
    )
    for name in once:
        assert torch.allclose(once[name], doubled[name], rtol=1e-9)
        ratio = once[name] / base[name].double()
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # base kept within the layer


def test_model_is_left_as_it_was_and_alphas_feed_approximate(data):
    model = TwoBranches().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    gains = calibrated_gains(model, data, eps=0.05, steps=2, samples=16)
    assert model.training and dict(model.named_modules()) == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _, report = approximate(model.eval(), mac_ratio=0.6, alphas=gains, input_shape=(1, 10, 10))
    assert report.macs_after <= 0.6 * report.macs_before


def test_bad_arguments(data):
    model = TwoBranches().eval()
    with pytest.raises(ValueError, match="fractions"):
        calibrated_gains(model, data, fractions=(0.0, 0.1))
    with pytest.raises(ValueError, match="attack"):
        calibrated_gains(model, data, attack="square")
    with pytest.raises(ValueError, match="alpha"):
        calibrated_gains(model, data, attack=None, base={"loud": torch.ones(3)})
