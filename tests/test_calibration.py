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


def test_kl_cannot_be_negative_where_the_textbook_sum_rounds_below_zero():
    """A confident model's log-probabilities barely moved: p * (log p - log q) summed rounds
    to small negative totals (a negative alpha, refused by approximate); `_kl` cannot."""
    import torch.nn.functional as F

    from gdws_export.gdws.calibration import _kl

    torch.manual_seed(0)
    textbook, ours = [], []
    for _ in range(50):
        logits = 30 * torch.randn(64, 10, dtype=torch.float64)
        reference = F.log_softmax(logits, dim=1)
        approx = F.log_softmax(logits + 1e-9 * torch.randn_like(logits), dim=1)
        textbook.append(float(F.kl_div(approx, reference, log_target=True, reduction="batchmean")))
        ours.append(_kl(reference, approx))
    assert min(textbook) < 0  # the bug this guards against is real on these inputs
    assert min(ours) >= 0
    assert max(abs(a - b) for a, b in zip(textbook, ours, strict=True)) < 1e-12
    assert _kl(reference, reference) == 0.0


class ConfidentSVHNNet(nn.Module):
    """A conv-BN-ReLU CNN for 3 x 16 x 16 images with very large logits (a third-party SVHN
    model trained to near-certainty), on which the textbook KL rounded negative."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return 1e3 * self.head(self.features(x))


def test_a_confident_conv_bn_relu_net_gets_non_negative_alphas_that_approximate_takes():
    torch.manual_seed(2)  # a draw where the textbook KL rounded below 0 for both layers
    model = ConfidentSVHNNet().eval()
    data = torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))
    gains = calibrated_gains(model, data, attack=None, samples=16)
    assert all(bool((g > 0).all()) and bool(torch.isfinite(g).all()) for g in gains.values())
    _, report = approximate(model, mac_ratio=0.5, alphas=gains, input_shape=(3, 16, 16))
    assert report.macs_after <= 0.5 * report.macs_before


def test_a_layer_that_moves_no_output_is_not_treated_as_free(data):
    """KL exactly 0 (nothing measurable) gives the smallest measured scale, not 0; with no
    layer measured, every layer keeps its base alphas."""
    model = TwoBranches().eval()
    model.forward = lambda x: model.head(  # the quiet branch no longer reaches the logits
        torch.relu(model.loud(torch.relu(model.stem(x)))).mean(dim=(2, 3))
        + 0 * model.quiet(torch.relu(model.stem(x))).mean(dim=(2, 3))
    )
    gains = calibrated_gains(model, data, attack=None, samples=32)
    assert float(gains["loud"].mean()) > 0
    assert torch.equal(gains["quiet"], gains["loud"])  # same base (ones), smallest scale
    model.forward = lambda x: 0 * model.head(model.quiet(model.loud(model.stem(x))).mean((2, 3)))
    unmeasured = calibrated_gains(model, data, attack=None, samples=32)
    assert all(torch.equal(g, torch.ones(8, dtype=torch.float64)) for g in unmeasured.values())


def test_approximate_takes_a_layer_of_all_zero_alphas():
    """Zero alphas say the layer's error costs nothing: it keeps the fewest kernels, no error."""
    model = TwoBranches().eval()
    alphas = {"loud": torch.ones(8), "quiet": torch.zeros(8)}
    _, report = approximate(model, mac_ratio=0.6, alphas=alphas, input_shape=(1, 10, 10))
    layers = {layer.name: layer for layer in report.layers}
    assert layers["quiet"].status == "gdws" and layers["quiet"].kernels == 1
