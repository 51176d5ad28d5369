"""Noise gains (alphas): the batched computation against a slow per-sample, per-pair reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdws_export.gdws.approximate import approximate
from gdws_export.gdws.selection import find_convs
from gdws_export.gdws.sensitivity import (
    _channel_grad_norms,
    load_alphas,
    load_input_moments,
    noise_gains,
    save_alphas,
)


def _net() -> nn.Module:
    """Strides, a non-square reflect-padded kernel, a grouped dilated 'same' conv and BN."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, (3, 2), stride=2, padding=(1, 0), padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, groups=2, padding="same", dilation=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _reference_alphas(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The paper's definition, one sample and one class pair at a time."""
    sites = [s for s in find_convs(model) if s.skip_reason is None]
    alphas = {s.name: torch.zeros(s.conv.in_channels, dtype=torch.float64) for s in sites}
    for b in range(len(x)):
        z = model(x[b : b + 1])[0]
        t = int(z.argmax())
        for j in range(len(z)):
            if j == t:
                continue
            margin = z[t] - z[j]
            grads = torch.autograd.grad(margin, [s.conv.weight for s in sites], retain_graph=True)
            for site, grad in zip(sites, grads, strict=True):
                m, c_per_group, kh, kw = grad.shape
                g = site.conv.groups
                per_channel = (
                    grad.double().pow(2).reshape(g, m // g, c_per_group, -1).sum(dim=(1, 3))
                )
                alphas[site.name] += per_channel.reshape(-1) / (
                    2 * margin.double() ** 2 * m * kh * kw
                )
    return {name: a / len(x) for name, a in alphas.items()}


def test_batched_alphas_match_the_slow_reference():
    model = _net()
    x, y = torch.rand(7, 3, 12, 12), torch.randint(0, 5, (7,))
    alphas = noise_gains(model, (x, y), attack=None, batch_size=3)
    reference = _reference_alphas(model, x)
    assert alphas.keys() == reference.keys() == {"3", "5"}
    for name in alphas:
        assert alphas[name].shape == reference[name].shape
        assert torch.allclose(alphas[name], reference[name], rtol=1e-4, atol=1e-12), name


@pytest.mark.parametrize("method", ["direct", "gram"])
@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, (2, 3), stride=2, padding=(1, 0), padding_mode="circular"),
     nn.Conv2d(6, 4, 3, groups=2, dilation=2, padding="same")],
)  # fmt: skip
def test_both_gradient_norm_identities_match_autograd(conv, method):
    x = torch.randn(3, conv.in_channels, 7, 9)
    out = conv(x)
    delta = torch.randn(2, *out.shape)  # two "pairs"
    norms = _channel_grad_norms(conv, x, delta, method=method)
    expected = torch.zeros(2, 3, conv.in_channels)
    g = conv.groups
    for j in range(2):
        for b in range(3):
            (grad,) = torch.autograd.grad(conv(x[b : b + 1]), conv.weight, delta[j, b : b + 1])
            m, c_per_group = grad.shape[:2]
            expected[j, b] = (
                grad.pow(2).reshape(g, m // g, c_per_group, -1).sum(dim=(1, 3)).reshape(-1)
            )
    assert torch.allclose(norms, expected, rtol=1e-4, atol=1e-6)


def test_adversarial_alphas_differ_from_clean_and_restore_the_mode():
    model = _net().train()
    x, y = torch.rand(6, 3, 12, 12), torch.randint(0, 5, (6,))
    clean = noise_gains(model, (x, y), attack=None)
    adversarial = noise_gains(model, (x, y), eps=8 / 255, steps=3, seed=1)
    assert model.training  # mode restored
    assert all((a >= 0).all() and torch.isfinite(a).all() for a in adversarial.values())
    assert any(not torch.allclose(clean[n], adversarial[n]) for n in clean)
    again = noise_gains(model, (x, y), eps=8 / 255, steps=3, seed=1)
    assert all(torch.equal(adversarial[n], again[n]) for n in adversarial)


def test_a_calibration_config_equals_its_keywords():
    from gdws_export.attacks import CalibrationConfig

    model = _net()
    x, y = torch.rand(6, 3, 12, 12), torch.randint(0, 5, (6,))
    by_keywords = noise_gains(model, (x, y), eps=8 / 255, steps=2, seed=1, batch_size=4)
    config = CalibrationConfig(eps=8 / 255, steps=2, seed=1)
    by_config = noise_gains(model, (x, y), calibration=config, batch_size=4)
    assert all(torch.equal(by_keywords[n], by_config[n]) for n in by_keywords)


def test_eval_mode_is_used_not_batch_statistics():
    model = _net()
    x, y = torch.rand(4, 3, 12, 12), torch.randint(0, 5, (4,))
    in_eval = noise_gains(model, (x, y), attack=None)
    in_train = noise_gains(model.train(), (x, y), attack=None)
    assert all(torch.equal(in_eval[n], in_train[n]) for n in in_eval)


def test_samples_and_loaders():
    model = _net()
    x, y = torch.rand(10, 3, 12, 12), torch.randint(0, 5, (10,))
    first4 = noise_gains(model, (x[:4], y[:4]), attack=None)
    loader = [(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])]
    from_loader = noise_gains(model, loader, attack=None, samples=4)
    assert all(torch.allclose(first4[n], from_loader[n]) for n in first4)


def test_alphas_feed_approximate_and_round_trip(tmp_path):
    model = _net()
    x, y = torch.rand(4, 3, 12, 12), torch.randint(0, 5, (4,))
    alphas = noise_gains(model, (x, y), attack=None)
    path = tmp_path / "alphas.pt"
    save_alphas(alphas, path, eps=0.0, samples=4)
    loaded = load_alphas(path)
    assert all(torch.equal(alphas[n], loaded[n]) for n in alphas)
    _, report = approximate(model, beta=1e-3, alphas=loaded, input_shape=(3, 12, 12))
    assert report.weighted
    assert load_input_moments(path) is None  # saved without them


def test_input_moments_round_trip(tmp_path):
    moments = {"a": torch.rand(3, 9, 9, dtype=torch.float64)}
    path = tmp_path / "alphas.pt"
    save_alphas({"a": torch.ones(3)}, path, input_moments=moments)
    assert torch.equal(load_input_moments(path)["a"], moments["a"])


def test_bad_alpha_files_and_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_alphas(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        load_alphas(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="not an alphas file"):
        load_alphas(other)
    x, y = torch.rand(2, 3, 12, 12), torch.randint(0, 5, (2,))
    with pytest.raises(ValueError, match="attack"):
        noise_gains(_net(), (x, y), attack="cw")
    with pytest.raises(ValueError, match="samples"):
        noise_gains(_net(), (x, y), samples=0)
    with pytest.raises(ValueError, match="labels"):
        noise_gains(_net(), (x, y[:1]))
