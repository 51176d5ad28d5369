"""Input-channel pruning: exact when nothing is pruned or the pruned channels carry no weight,
MACs as counted, the weakest channels go first (against brute force on a small case), ONNX."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from gdws_export.baselines import ChannelSubsetConv2d, prune_input_channels
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.selection import count_macs, find_convs
from gdws_export.models import create_model


def _model(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return create_model("preact_resnet18", in_channels=1, input_size=28, width=width).eval()


def _input_of(model: nn.Module, conv: nn.Conv2d, shape) -> tuple[int, int, int]:
    """The (C, H, W) input `conv` sees inside `model`."""
    seen = {}

    def record(_module, inputs, _output) -> None:  # a hook that returns a value replaces the output
        seen["x"] = inputs[0]

    hook = conv.register_forward_hook(record)
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    hook.remove()
    return tuple(seen["x"].shape[1:])


def test_subset_conv_is_exact_when_the_dropped_channels_have_no_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, [1, 4]] = 0
    subset = ChannelSubsetConv2d(conv, torch.tensor([5, 0, 2, 3]))
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(subset(x), conv(x), atol=1e-6, rtol=1e-6)
    assert subset.conv.in_channels == 4 and subset.channel_index.tolist() == [0, 2, 3, 5]


def test_full_budget_changes_nothing():
    model = _model()
    pruned, report = prune_input_channels(model, mac_ratio=1.0)
    assert report.achieved_mac_ratio == 1.0
    assert not any(isinstance(m, ChannelSubsetConv2d) for m in pruned.modules())
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(pruned(x), model(x))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25])
def test_budget_met_and_macs_counted(ratio):
    model, shape = _model(), (1, 28, 28)
    pruned, report = prune_input_channels(model, mac_ratio=ratio)
    assert report.achieved_mac_ratio <= ratio
    # The MACs the model lost are the approximable convs' MACs times (1 - achieved ratio).
    sites = [s.conv for s in find_convs(model) if s.skip_reason is None]
    approximable = sum(
        count_macs(nn.Sequential(conv), _input_of(model, conv, shape)) for conv in sites
    )
    cut = count_macs(model, shape) - count_macs(pruned, shape)
    assert cut == pytest.approx((1 - report.achieved_mac_ratio) * approximable, rel=1e-9)
    for name, kept in report.kept.items():
        assert 1 <= kept <= report.channels[name]
        module = pruned.get_submodule(name)
        if kept < report.channels[name]:
            assert isinstance(module, ChannelSubsetConv2d) and module.conv.in_channels == kept


def test_the_weakest_channels_go_first_against_brute_force():
    """One conv after a stem: keeping k channels, the kept set has the most weight energy of
    any k-subset (the strongest channel is always kept)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1))
    energy = model[2].weight.detach().pow(2).sum(dim=(0, 2, 3))
    for ratio, k in ((0.6, 3), (0.4, 2), (0.2, 1)):
        pruned, report = prune_input_channels(model, mac_ratio=ratio, input_shape=(1, 6, 6))
        assert report.kept["2"] == k
        kept = pruned[2].channel_index.tolist()
        best = max(itertools.combinations(range(5), k), key=lambda s: float(energy[list(s)].sum()))
        assert sorted(kept) == sorted(best)


def test_onnx_export_matches_pytorch(tmp_path):
    from gdws_export.lowering import export_onnx
    from gdws_export.runtimes.build import build

    model = _model()
    pruned, _ = prune_input_channels(model, mac_ratio=0.4)
    x = torch.rand(8, 1, 28, 28)
    exported = export_onnx(pruned, input_shape=(1, 28, 28), path=tmp_path / "in_r0.4.onnx",
                           lowering="gather", exporter="legacy", parity_inputs=x,
                           threads=1)  # fmt: skip
    built = build(exported.onnx_path, target="ort", threads=1, output_dir=tmp_path)
    with built.runner() as runner:
        out = runner.predict(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(out, pruned(x).numpy(), atol=1e-4)


def test_bad_budgets_are_errors():
    with pytest.raises(InvalidInputError, match="mac_ratio"):
        prune_input_channels(_model(), mac_ratio=0.0)
