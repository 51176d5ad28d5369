"""The 1x1 refit: exact at full rank, the least-squares solution (checked against
torch.linalg.lstsq on explicitly built features), layers fit in order to the approximated
inputs, grouped and bias-free convs, and accuracy recovered on real data."""

from __future__ import annotations

import copy

import pytest
import torch
from _trained import trained_lenet
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.gdws.approximate import approximate
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.refit import refit_pointwise


class TwoConvs(nn.Module):
    def __init__(self, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=bias)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1, groups=groups, bias=bias)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv1(x))
        x = self.conv2(x)
        return self.head(x.mean(dim=(2, 3)))


def _net(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return TwoConvs(**kwargs).eval()


def _images(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 10, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


def _capture(model: nn.Module, name: str, x: torch.Tensor, *, inputs: bool) -> torch.Tensor:
    """The input (or output) of submodule `name` in one forward pass."""
    seen = {}
    module = model.get_submodule(name)
    if inputs:
        handle = module.register_forward_pre_hook(lambda m, a: seen.setdefault("t", a[0]))
    else:
        handle = module.register_forward_hook(lambda m, a, o: seen.setdefault("t", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["t"]


def _lstsq_pointwise(refit_layer: GDWSConv2d, z_input: torch.Tensor, target: torch.Tensor):
    """Per group: the plain least-squares 1x1 weights (and bias) from explicit features."""
    with torch.no_grad():
        z = refit_layer.kernel_outputs(z_input).double()
    groups = refit_layer.groups
    n, width, h, w = z.shape
    m = target.shape[1]
    weights, biases = [], []
    for k in range(groups):
        zk = z[:, k * width // groups : (k + 1) * width // groups].permute(0, 2, 3, 1)
        zk = zk.reshape(-1, width // groups)
        if refit_layer.pointwise.bias is not None:
            zk = torch.cat([zk, torch.ones(len(zk), 1, dtype=zk.dtype)], dim=1)
        yk = target[:, k * m // groups : (k + 1) * m // groups].double().permute(0, 2, 3, 1)
        solution = torch.linalg.lstsq(zk, yk.reshape(-1, m // groups), driver="gelsd").solution
        weights.append(solution[: width // groups].T)
        if refit_layer.pointwise.bias is not None:
            biases.append(solution[width // groups])
    weight = torch.cat(weights).reshape(refit_layer.pointwise.weight.shape)
    return weight, (torch.cat(biases) if biases else None)


def test_full_rank_refit_keeps_the_exact_model():
    model = _net()
    x, y = _images()
    exact = copy.deepcopy(model)  # approximate would keep convs this small as they are
    exact.conv1 = GDWSConv2d.from_conv(model.conv1, beta=0.0)
    exact.conv2 = GDWSConv2d.from_conv(model.conv2, beta=0.0)
    refit, report = refit_pointwise(exact, model, (x, y), attack=None, samples=24, ridge=0.0)
    assert [layer.name for layer in report.layers] == ["conv1", "conv2"]
    assert all(layer.error_before < 1e-10 and layer.error_after < 1e-10 for layer in report.layers)
    torch.testing.assert_close(refit(x), model(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("groups", "bias"), [(1, True), (2, False)])
def test_each_layer_gets_the_least_squares_weights_for_its_approximated_input(groups, bias):
    model = _net(groups=groups, bias=bias)
    x, y = _images()
    gdws, _ = approximate(model, mac_ratio=0.3, input_shape=(1, 10, 10))
    refit, report = refit_pointwise(gdws, model, (x, y), attack=None, samples=24, ridge=0.0)
    for name in ("conv1", "conv2"):
        layer = refit.get_submodule(name)
        # conv2's features come from the refit model (conv1 already refit), its target from
        # the original model: the refit corrects what the earlier layers left.
        z_input = _capture(refit, name, x, inputs=True)
        target = _capture(model, name, x, inputs=False)
        weight, bias_ = _lstsq_pointwise(layer, z_input, target)
        torch.testing.assert_close(layer.pointwise.weight.double(), weight, rtol=1e-4, atol=1e-5)
        if bias:
            torch.testing.assert_close(layer.pointwise.bias.double(), bias_, rtol=1e-4, atol=1e-5)
        else:
            assert layer.pointwise.bias is None
        assert layer.pointwise.groups == groups
        # The report's errors are the layer's relative output errors, before and after.
        with torch.no_grad():
            after = (layer(z_input) - target).pow(2).sum() / target.pow(2).sum()
            before = (gdws.get_submodule(name)(z_input) - target).pow(2).sum() / target.pow(2).sum()
        row = next(r for r in report.layers if r.name == name)
        assert row.error_after == pytest.approx(float(after), rel=1e-3, abs=1e-7)
        assert row.error_before == pytest.approx(float(before), rel=1e-3, abs=1e-7)
        assert row.error_after <= row.error_before
    # Kernels, and so MACs and lowering, are as approximate chose them.
    for name in ("conv1", "conv2"):
        assert torch.equal(refit.get_submodule(name).depthwise.weight,
                           gdws.get_submodule(name).depthwise.weight)  # fmt: skip


def test_ridge_shrinks_the_weights_and_a_layer_it_would_worsen_keeps_its_own():
    model = _net()
    x, y = _images()
    gdws, _ = approximate(model, mac_ratio=0.3, input_shape=(1, 10, 10))
    norms = []
    for ridge in (0.0, 1e-2, 1e-1):
        refit, report = refit_pointwise(gdws, model, (x, y), attack=None, samples=24,
                                        ridge=ridge)  # fmt: skip
        assert report.ridge == ridge and report.layers[0].changed
        norms.append(float(refit.conv1.pointwise.weight.detach().norm()))
    assert norms[0] > norms[1] > norms[2]
    # Shrunk to nothing (the bias alone: the mean target), the 1x1 weights of the one GDWS layer
    # at 0.8 (conv2) would fit worse than approximate's (at 0.3 approximate's fit worse than
    # the mean): it keeps its own, and its error is what it was.
    close, _ = approximate(model, mac_ratio=0.8, input_shape=(1, 10, 10))
    refit, report = refit_pointwise(close, model, (x, y), attack=None, samples=24, ridge=1e8)
    assert [(layer.name, layer.changed) for layer in report.layers] == [("conv2", False)]
    assert report.layers[0].error_after == report.layers[0].error_before > 0.05
    for part in ("weight", "bias"):
        assert torch.equal(
            getattr(refit.conv2.pointwise, part), getattr(close.conv2.pointwise, part)
        )
    assert "(kept: no lower)" in report.table()


def test_exact_layers_are_not_shrunk_by_the_ridge():
    model = _net()
    x, y = _images()
    exact = copy.deepcopy(model)
    exact.conv1 = GDWSConv2d.from_conv(model.conv1, beta=0.0)
    exact.conv2 = GDWSConv2d.from_conv(model.conv2, beta=0.0)
    refit, report = refit_pointwise(exact, model, (x, y), attack=None, samples=24, ridge=1e-2)
    assert not any(layer.changed for layer in report.layers)
    torch.testing.assert_close(refit(x), exact(x), rtol=0, atol=0)


def test_refit_recovers_held_out_accuracy_of_a_trained_net():
    model, x_test, y_test = trained_lenet()
    x_calib, y_calib = x_test[:100], y_test[:100]  # held-out images, not the ones scored below
    x_eval = x_test[100:]
    gdws, _ = approximate(model, mac_ratio=0.2)
    refit, report = refit_pointwise(gdws, model, (x_calib, y_calib), eps=0.1, samples=100)
    assert report.inputs == 200  # clean and PGD images
    with torch.no_grad():
        logits = {k: m(x_eval) for k, m in (("original", model), ("gdws", gdws), ("refit", refit))}
    agree = {k: float((v.argmax(1) == logits["original"].argmax(1)).float().mean())
             for k, v in logits.items()}  # fmt: skip
    error = {k: float((v - logits["original"]).pow(2).mean()) for k, v in logits.items()}
    assert all(layer.error_after < layer.error_before for layer in report.layers)
    # On images neither step saw: the refit model predicts as the original far more often.
    assert agree["gdws"] < 0.9 <= agree["refit"]
    assert error["refit"] < 0.5 * error["gdws"]


def test_inputs_are_left_untouched_and_bad_inputs_named():
    model = _net()
    x, y = _images()
    gdws, _ = approximate(model, mac_ratio=0.3, input_shape=(1, 10, 10))
    before = copy.deepcopy(gdws.state_dict())
    refit_pointwise(gdws, model, (x, y), attack=None, samples=8)
    assert all(torch.equal(v, before[k]) for k, v in gdws.state_dict().items())
    with pytest.raises(UnsupportedModelError, match="no GDWS layer"):
        refit_pointwise(model, model, (x, y), attack=None, samples=8)
    other = _net()
    other.conv1 = nn.Conv2d(8, 6, 3)
    for wrong in (other, nn.Sequential()):
        with pytest.raises(InvalidInputError, match="no conv 'conv1' with 8 inputs and 12"):
            refit_pointwise(gdws, wrong, (x, y), attack=None, samples=8)
    with pytest.raises(InvalidInputError, match="ridge"):
        refit_pointwise(gdws, model, (x, y), attack=None, samples=8, ridge=-1.0)
    with pytest.raises(InvalidInputError, match="attack"):
        refit_pointwise(gdws, model, (x, y), attack="fgsm", samples=8)
    for bad in (0.0, -1.0, True):
        with pytest.raises(InvalidInputError, match="eps_scale"):
            refit_pointwise(gdws, model, (x, y), samples=8, eps_scale=bad)


def test_calibration_attack_runs_at_eps_scale_times_the_threat_model():
    """eps_scale multiplies the calibration PGD's radius and step: the same refit as asking for
    that attack directly with eps_scale 1, and a different one from eps_scale 1 at eps."""
    model = _net()
    x, y = _images()
    gdws, _ = approximate(model, mac_ratio=0.3, input_shape=(1, 10, 10))
    common = dict(samples=12, steps=3, seed=5)
    scaled, report = refit_pointwise(gdws, model, (x, y), eps=0.05, step_size=0.02, **common)
    direct, _ = refit_pointwise(gdws, model, (x, y), eps=0.1, step_size=0.04, eps_scale=1,
                                **common)  # fmt: skip
    plain, _ = refit_pointwise(gdws, model, (x, y), eps=0.05, step_size=0.02, eps_scale=1,
                               **common)  # fmt: skip
    assert report.attack_eps == pytest.approx(0.1)
    weights = {k: m.conv1.pointwise.weight for k, m in
               (("scaled", scaled), ("direct", direct), ("plain", plain))}  # fmt: skip
    assert torch.equal(weights["scaled"], weights["direct"])
    assert not torch.allclose(weights["scaled"], weights["plain"])
    assert "PGD at eps 0.1" in report.table()
    _, clean = refit_pointwise(gdws, model, (x, y), attack=None, samples=8)
    assert clean.attack_eps is None
