"""Models gdws-export did not make (issue 28): small hand-written stand-ins for third-party
CNNs, each run through the part of the export that broke on its kind."""

from __future__ import annotations

import torch
from _lowering_nets import gdwsify, randomize_batchnorm
from torch import nn

import gdws_export.lowering.auto as auto
import gdws_export.lowering.pipeline as lowering_pipeline
from gdws_export.lowering import export_onnx
from gdws_export.lowering.fold import find_fold_sites
from gdws_export.lowering.timing import TimedGraph


class GroupedAfterFoldable(nn.Module):
    """A ResNeXt-like stage: a plain conv-BN-ReLU feeding a grouped 3x3 conv (groups=4), the
    pattern a fold would reach through BN and ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class _NoRunner:
    def deactivate(self):
        pass


def test_auto_lowering_declines_the_fold_of_a_grouped_conv(tmp_path, monkeypatch):
    """`auto` crashed ('a folded GDWS conv must have groups == 1'): a grouped GDWS conv has no
    fold site, so no fold form is offered for it, whatever the timings say."""
    original = randomize_batchnorm(GroupedAfterFoldable()).eval()
    model = gdwsify(original, 0.05)
    assert model.conv2.groups == 4
    sites, reasons = find_fold_sites(model)
    assert "conv1" in sites and "conv2" not in sites
    assert "grouped" in reasons["conv2"]

    def fold_is_fastest(graphs, repeats):  # every fold form the fastest, if it were offered
        for key, graph in graphs.items():
            graph.samples = [(1.0 if key.startswith("fold") else 5.0) / 1e3] * repeats

    monkeypatch.setattr(auto, "time_interleaved", fold_is_fastest)
    monkeypatch.setattr(auto, "timing_graph", lambda *a: TimedGraph(_NoRunner(), {}))
    per_layer_plan_fastest = {"auto": (1.0, 1.0, 1.0), "gather": (5.0, 5.0, 5.0),
                              "dense": (5.0, 5.0, 5.0)}  # fmt: skip
    monkeypatch.setattr(lowering_pipeline, "time_networks",
                        lambda models, *a, **k: {m: per_layer_plan_fastest[m] for m in models})  # fmt: skip
    result = export_onnx(model, input_shape=(3, 16, 16), path=tmp_path / "g.onnx",
                         lowering="auto", original=original, exporter="legacy", repeats=1)  # fmt: skip
    assert result.network_plan == "auto" and result.forms["conv1"] == "fold"
    assert not result.forms["conv2"].startswith("fold")
    notes = {layer.name: layer.notes for layer in result.layers}
    assert any("no fold site" in n for n in notes["conv2"])
    assert result.parity.passed


class ThirdPartyLeNet(nn.Module):
    """The classic LeNet-5 (BatchNorm after the first conv), with a three-Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


LENET_SHAPE = (1, 28, 28)
# By hand: convs 6*25*28*28 + 16*150*10*10, Linears 400*120 + 120*84 + 84*10.
LENET_MACS = 117_600 + 240_000 + 48_000 + 10_080 + 840


def _lenet_files(folder) -> dict[str, object]:
    torch.manual_seed(0)
    model = ThirdPartyLeNet().eval()
    x = torch.rand(2, *LENET_SHAPE)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "lenet.pt2")
    torch.jit.save(torch.jit.script(model), folder / "lenet_script.pt")
    torch.jit.save(torch.jit.trace(model, x), folder / "lenet_trace.pt")
    return model, ["lenet.pt2", "lenet_script.pt", "lenet_trace.pt"]


def test_macs_and_params_of_loaded_programs_match_the_eager_model(tmp_path):
    """.pt2 and TorchScript programs lost their Linear MACs (aten.linear calls, no modules)
    and TorchScript its Linear parameters (stored as buffers); both now count."""
    from torch.utils.flop_counter import FlopCounterMode

    from gdws_export.loading import load_model_file
    from gdws_export.pipeline import count_macs_params

    model, names = _lenet_files(tmp_path)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *LENET_SHAPE))
    assert counter.get_total_flops() == 2 * LENET_MACS  # the independent count agrees
    eager_params = sum(p.numel() for p in model.parameters())
    assert count_macs_params(model, LENET_SHAPE) == (LENET_MACS, eager_params)
    for name in names:
        loaded = load_model_file(tmp_path / name, input_shape=LENET_SHAPE)
        assert isinstance(loaded.module, torch.fx.GraphModule), name
        assert count_macs_params(loaded.module, LENET_SHAPE) == (LENET_MACS, eager_params), name


class EfficientNetLiteLike(nn.Module):
    """A full 3x3 stem, then inverted-residual blocks whose only KxK convs are depthwise:
    nothing GDWS can make cheaper (the first conv is always kept exact)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            hidden = 4 * cin
            return nn.Sequential(
                nn.Conv2d(cin, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.BatchNorm2d(hidden),
                nn.ReLU6(), nn.Conv2d(hidden, cout, 1), nn.BatchNorm2d(cout),
            )  # fmt: skip

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(block(8, 16, 1), block(16, 16, 2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def test_a_net_without_a_replaceable_conv_ships_the_original(tmp_path, capsys):
    """Every KxK conv depthwise: exit 0 with the original engine and a report saying why,
    where the export used to refuse the model (exit 3)."""
    from gdws_export.cli import main
    from gdws_export.pipeline import ExportReport

    model = randomize_batchnorm(EfficientNetLiteLike()).eval()
    program = torch.export.export(model, (torch.rand(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    torch.export.save(program, tmp_path / "lite.pt2")
    out = tmp_path / "out"
    argv = [str(tmp_path / "lite.pt2"), "-o", str(out), "--exporter", "legacy", "--threads", "1"]
    assert main(argv) == 0
    said = "no replaceable conv: every KxK conv is depthwise (or 1x1), so the original ships"
    stdout = capsys.readouterr().out
    assert said in stdout and "(speed-up 1.00x)" in stdout and "(1.00x)" in stdout
    report = ExportReport.load(out / "report.json")
    assert report.original_ships.startswith(said)
    assert report.files["engine"] == "original.fp32.ort.onnx" and "gdws_onnx" not in report.files
    assert report.approximation is None and report.macs == {"original": report.macs["original"]}
    assert f"- shipped: {report.original_ships}; speed-up 1.00x" in (out / "report.md").read_text()


def test_only_a_fully_excluded_model_says_exclude_left_nothing():
    from gdws_export.pipeline.model import no_replacement_reason

    model = GroupedAfterFoldable()
    assert no_replacement_reason(model, "m.pt") is None
    reason = no_replacement_reason(model, "m.pt", ("conv1", "conv2"))
    assert reason.startswith("no replaceable conv: --exclude leaves none (conv1, conv2 excluded)")
    assert reason.endswith("so the original ships (the first conv, stem, is always kept exact)")
