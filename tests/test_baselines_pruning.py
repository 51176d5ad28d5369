"""L1-norm filter pruning: which convs, shapes, the function kept, MAC accounting, L1 order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdws_export.baselines import find_prune_sites, l1_order, prune_filters
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.models import create_model


def _vgg(width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("vgg16_bn", in_channels=1, input_size=28, width=width)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so slicing them matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


class Chain(nn.Module):
    """conv - BN - ReLU - pool - conv - ReLU - global pool - linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)
        self.input_shape = (2, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(torch.relu(self.bn(self.a(self.stem(x)))))
        out = torch.relu(self.b(out))
        return self.fc(out.mean(dim=(2, 3)))


def _conv_macs(model: nn.Module, shape) -> int:
    """Conv MACs of one image, counted from the modules that actually run."""
    total = 0

    def hook(module, _inputs, out):
        nonlocal total
        kh, kw = module.kernel_size
        total += out.shape[1] * (module.in_channels // module.groups) * kh * kw * out[0, 0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return total


def test_sites_of_vgg_chain_every_conv_but_the_first_and_the_last():
    model = _vgg()
    sites, reasons = find_prune_sites(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [s.producer for s in sites] == convs[1:-1]
    assert [s.consumer for s in sites] == convs[2:]
    for site in sites:  # the BatchNorm right after each producer
        index = int(site.producer.split(".")[1])
        assert site.batchnorms == (f"features.{index + 1}",)
    assert "first conv" in reasons[convs[0]]
    assert convs[-1] in reasons
    sites_all, _ = find_prune_sites(model, skip_first=False)
    assert sites_all[0].producer == convs[0]


def test_residual_convs_are_left_alone():
    model = create_model("preact_resnet18", in_channels=1, input_size=28, width=4).eval()
    sites, reasons = find_prune_sites(model)
    assert sites and all(s.producer.endswith("conv1") for s in sites)
    assert all(s.consumer == s.producer[: -len("conv1")] + "conv2" for s in sites)
    assert "combines" in reasons["layer1.0.conv2"]


def test_pruning_nothing_keeps_the_function_and_leaves_the_input_alone():
    model = _vgg()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_filters(model, fraction=0.0)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=0)
    assert report.macs_after == report.macs_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shapes_and_macs_after_pruning_half():
    model = _vgg(width=8)
    pruned, report = prune_filters(model, fraction=0.5)
    modules = dict(pruned.named_modules())
    for layer in report.layers:
        kept = layer.filters_after
        assert kept == layer.filters_before - round(0.5 * layer.filters_before)
        assert modules[layer.name].out_channels == kept == len(layer.kept)
        assert modules[layer.consumer].in_channels == kept
        index = int(layer.name.split(".")[1])
        bn = modules[f"features.{index + 1}"]
        assert bn.num_features == kept and bn.running_var.shape == (kept,)
    assert pruned(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert report.macs_before == _conv_macs(model, (1, 28, 28))
    assert report.macs_after == _conv_macs(pruned, (1, 28, 28))
    assert report.achieved_mac_ratio < 0.5


def test_l1_order_prunes_the_smallest_filters_and_keeps_the_function_of_the_rest():
    torch.manual_seed(0)
    model = Chain().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        scales = torch.tensor([3.0, 0.1, 2.0, 0.5])  # filters 1 and 3 have the smallest L1
        model.a.weight.mul_(scales[:, None, None, None] / model.a.weight.abs().mean())
    assert l1_order(model.a)[:2].tolist() == [1, 3]
    pruned, report = prune_filters(model, fraction=0.5)
    layer = next(lay for lay in report.layers if lay.name == "a")
    assert layer.kept == [0, 2]
    # Removing filters 1 and 3 is the same as cutting what the consumer reads from them.
    reference = Chain().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.b.weight[:, [1, 3]] = 0
    x = torch.rand(4, 2, 8, 8)
    torch.testing.assert_close(pruned(x), reference(x))


def test_mac_ratio_is_met_with_the_smallest_common_fraction():
    model = _vgg(width=8)
    pruned, report = prune_filters(model, mac_ratio=0.5)
    assert report.achieved_mac_ratio <= 0.5
    assert report.achieved_mac_ratio == _conv_macs(pruned, (1, 28, 28)) / report.macs_before
    _, less = prune_filters(model, fraction=max(report.fraction - 0.07, 0.0))
    assert less.achieved_mac_ratio > 0.5  # one filter fewer removed per layer misses the target


def test_errors():
    model = _vgg()
    with pytest.raises(InvalidInputError):
        prune_filters(model)
    with pytest.raises(InvalidInputError):
        prune_filters(model, fraction=0.5, mac_ratio=0.5)
    with pytest.raises(InvalidInputError):
        prune_filters(model, fraction=1.0)
    with pytest.raises(UnsupportedModelError, match="out of reach"):
        prune_filters(model, mac_ratio=0.001)
    single = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UnsupportedModelError, match="no conv can be pruned"):
        prune_filters(single, fraction=0.5, input_shape=(1, 6, 6), skip_first=False)


def test_multiple_of_rounds_every_pruned_width_down_and_still_meets_the_ratio():
    model = _vgg(width=8)  # widths 8 to 64
    pruned, report = prune_filters(model, mac_ratio=0.6, multiple_of=8)
    assert report.achieved_mac_ratio <= 0.6
    assert report.achieved_mac_ratio == _conv_macs(pruned, (1, 28, 28)) / report.macs_before
    for layer in report.layers:
        assert layer.filters_after % 8 == 0 and 8 <= layer.filters_after <= layer.filters_before
    _, plain = prune_filters(model, fraction=report.fraction)
    assert [lay.filters_after for lay in report.layers] == [
        max(8, lay.filters_after - lay.filters_after % 8) if lay.filters_before > 8
        else lay.filters_before for lay in plain.layers
    ]  # fmt: skip
    with pytest.raises(InvalidInputError):
        prune_filters(model, mac_ratio=0.6, multiple_of=0)
