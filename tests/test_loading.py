"""Loading model files of every kind: detection by content, safety, conversion, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from gdws_export import approximate
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.loading import (
    check_finite,
    convert_convs,
    detect_format,
    load_model_file,
    pickle_globals,
)
from tests import _model_files as files


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_project_checkpoint_needs_no_arch(tmp_path):
    path = files.checkpoint(tmp_path)
    loaded = load_model_file(path)
    assert (loaded.kind, loaded.arch, loaded.input_shape) == ("checkpoint", "lenet", files.SHAPE)
    assert not loaded.module.training
    assert _same_outputs(loaded.module, files.lenet(), files.images(3))


@pytest.mark.parametrize(
    ("training", "eps"),
    [
        ({"eps": 0.1, "norm": "linf"}, 0.1),
        ({"eps": 0.05}, 0.05),  # L-inf unless the metadata says otherwise
        ({"eps": 0.5, "norm": "l2"}, None),
        ({"eps": "8/255"}, None),
        ({"eps": True}, None),
        ({}, None),
        (None, None),
    ],
)
def test_checkpoint_records_the_eps_it_was_trained_at(tmp_path, training, eps):
    from gdws_export.models import save_checkpoint

    metadata = {} if training is None else {"training": training}
    path = save_checkpoint(files.lenet(), tmp_path / "robust.pt", **metadata)
    assert load_model_file(path).trained_eps == eps
    bare = load_model_file(files.state_dict_file(tmp_path), arch="lenet",
                           arch_kwargs={"width": 4}, input_shape=files.SHAPE)  # fmt: skip
    assert bare.trained_eps is None  # a state_dict records no training


def test_bundled_checkpoints_record_their_threat_model():
    loaded = load_model_file("fmnist_vgg16_bn_w16")
    assert loaded.trained_eps == 0.1 and loaded.to_dict()["trained_eps"] == 0.1


@pytest.mark.parametrize("wrap_key", [None, "state_dict", "model_state_dict", "net"])
def test_state_dict_with_arch(tmp_path, wrap_key):
    path = files.state_dict_file(tmp_path, wrap_key)
    loaded = load_model_file(path, arch="lenet", arch_kwargs={"width": 4}, input_shape=files.SHAPE)
    assert loaded.kind == "state_dict"
    assert loaded.arch_kwargs["in_channels"] == 1 and loaded.arch_kwargs["input_size"] == 16
    assert _same_outputs(loaded.module, files.lenet(), files.images(3))


def test_state_dict_without_arch_says_to_pass_it(tmp_path):
    with pytest.raises(InvalidInputError, match=r"--arch NAME \(one of .*lenet"):
        load_model_file(files.state_dict_file(tmp_path))


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path):
    path = files.state_dict_file(tmp_path)
    with pytest.raises(InvalidInputError, match=r"missing key.*unexpected key") as err:
        load_model_file(path, arch="resnet18", input_shape=(1, 16, 16))
    assert "features.0.weight" in str(err.value)  # a LeNet key, unexpected in a ResNet
    with pytest.raises(InvalidInputError, match=r"shape mismatch.*features\.0\.weight"):
        load_model_file(path, arch="lenet", arch_kwargs={"width": 8}, input_shape=files.SHAPE)


def test_unknown_arch_lists_the_known_ones(tmp_path):
    with pytest.raises(InvalidInputError, match=r"unknown model 'lenett'; did you mean 'lenet'"):
        load_model_file(files.state_dict_file(tmp_path), arch="lenett")


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_becomes_an_editable_module(tmp_path, how):
    path = files.torchscript_file(tmp_path, how)
    reference = files.lenet(mean=[0.5], std=[0.25])
    loaded = load_model_file(path, input_shape=files.SHAPE)
    assert loaded.kind == "torchscript_program"
    convs = {n: type(m) for n, m in loaded.module.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs == {"features.0": nn.Conv2d, "features.3": nn.Conv2d}  # the eager names
    x = files.images(5)
    assert _same_outputs(loaded.module, reference, x)  # batch 5: the batch axis stayed dynamic
    # GDWS on the converted module equals GDWS on the eager model, layer for layer.
    ours, report = approximate(loaded.module, mac_ratio=0.5, input_shape=files.SHAPE)
    theirs, _ = approximate(reference, mac_ratio=0.5)
    assert [lay.status for lay in report.layers] == ["skipped", "gdws"]
    assert _same_outputs(ours, theirs, x)


def test_scripted_registry_model_records_its_shape(tmp_path):
    loaded = load_model_file(files.torchscript_file(tmp_path, "script"))
    assert loaded.input_shape == files.SHAPE


def test_traced_model_without_shape_asks_for_it(tmp_path):
    with pytest.raises(InvalidInputError, match="pass --input-shape"):
        load_model_file(files.torchscript_file(tmp_path, "trace"))


def test_torchscript_weights_into_a_registry_arch_keep_normalization(tmp_path):
    path = files.torchscript_file(tmp_path, "script")
    loaded = load_model_file(path, arch="lenet", arch_kwargs={"width": 4}, input_shape=files.SHAPE)
    assert loaded.kind == "torchscript"
    assert loaded.arch_kwargs["mean"] == [0.5] and loaded.arch_kwargs["std"] == [0.25]
    assert _same_outputs(loaded.module, files.lenet(mean=[0.5], std=[0.25]), files.images(3))


def test_torchscript_the_converter_rejects_is_refused_with_alternatives(tmp_path, monkeypatch):
    import torch._export.converter as converter

    class Rejecting:
        def __init__(self, *args):
            raise RuntimeError("Unsupported node kind prim::Mystery\nmore C++ detail")

    monkeypatch.setattr(converter, "TS2EPConverter", Rejecting)
    path = files.torchscript_file(tmp_path, "script")
    with pytest.raises(UnsupportedModelError, match=r"prim::Mystery\); pass --arch NAME") as err:
        load_model_file(path)
    assert "\n" not in str(err.value)


def test_export_program_with_dynamic_batch(tmp_path):
    loaded = load_model_file(files.export_file(tmp_path))
    assert (loaded.kind, loaded.input_shape, loaded.fixed_batch) == (
        "torch_export",
        files.SHAPE,
        None,
    )
    assert isinstance(loaded.module.get_submodule("features.3"), nn.Conv2d)
    assert _same_outputs(loaded.module, files.lenet(), files.images(7))
    gdws, report = approximate(loaded.module, mac_ratio=0.5, input_shape=files.SHAPE)
    assert report.replaced and not torch.equal(
        gdws(files.images(2)), loaded.module(files.images(2))
    )


def test_export_program_holding_code_is_refused_until_trusted(tmp_path):
    path, marker = files.tampered_export_file(tmp_path)
    with pytest.raises(InvalidInputError, match=r"would run code when loaded.*weight_0"):
        load_model_file(path)
    assert not marker.exists()
    with pytest.raises(InvalidInputError, match="cannot be loaded"):  # trusted: it ran; no tensor
        load_model_file(path, trust_pickle=True)
    assert marker.exists()


def test_export_program_with_batch_one_is_static(tmp_path):
    loaded = load_model_file(files.export_file(tmp_path, batch=1))
    assert loaded.fixed_batch == 1
    assert any("static batch" in note for note in loaded.notes)


def test_export_program_with_a_larger_fixed_batch_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"fixes the batch size to 2.*dynamic"):
        load_model_file(files.export_file(tmp_path, batch=2))


def test_export_program_shape_must_agree(tmp_path):
    with pytest.raises(InvalidInputError, match=r"exported for inputs \(N, 1, 16, 16\)"):
        load_model_file(files.export_file(tmp_path), input_shape=(3, 16, 16))


def test_pickled_module_needs_trust(tmp_path):
    path = files.pickled_module_file(tmp_path)
    with pytest.raises(InvalidInputError, match=r"LeNet.*would run code.*--trust-pickle"):
        load_model_file(path)
    loaded = load_model_file(path, trust_pickle=True)
    assert loaded.kind == "pickled_module" and loaded.input_shape == files.SHAPE
    assert _same_outputs(loaded.module, files.lenet(), files.images(3))


def test_pickle_that_would_run_code_never_runs_it(tmp_path):
    paths, marker = files.code_running_pickles(tmp_path)
    for path in paths:
        assert "io.open" in pickle_globals(path) or "builtins.open" in pickle_globals(path)
        with pytest.raises(InvalidInputError, match=r"(io|builtins)\.open.*--trust-pickle"):
            load_model_file(path)
        assert not marker.exists()


@pytest.mark.parametrize(
    ("contents", "message"),
    [([1, 2, 3], "holds a list, not a state_dict"), ({"a": "b"}, "holds no state_dict")],
)
def test_non_model_pickle(tmp_path, contents, message):
    path = tmp_path / "thing.pt"
    torch.save(contents, path)
    with pytest.raises(InvalidInputError, match=message):
        load_model_file(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"\x00\x01not a model at all"), "not a PyTorch file"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_unreadable_files(tmp_path, make, message):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(InvalidInputError, match=message):
        load_model_file(path)


def test_truncated_files(tmp_path):
    whole = files.checkpoint(tmp_path).read_bytes()
    zipped = tmp_path / "cut.pt"
    zipped.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidInputError, match="truncated or corrupt zip archive"):
        load_model_file(zipped)
    legacy = tmp_path / "legacy.pt"
    torch.save(files.lenet().state_dict(), legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:100])
    with pytest.raises(InvalidInputError, match="cannot be read"):
        load_model_file(legacy, arch="lenet")


def test_nan_weights_are_named(tmp_path):
    model = files.lenet()
    with torch.no_grad():
        model.features[3].weight[0, 0, 0, 0] = float("nan")
    from gdws_export.models import save_checkpoint

    path = save_checkpoint(model, tmp_path / "nan.pt")
    with pytest.raises(InvalidInputError, match=r"'features\.3\.weight' contains NaN"):
        load_model_file(path)
    check_finite(files.lenet())  # a sound model passes


def test_detect_format(tmp_path):
    assert detect_format(files.checkpoint(tmp_path)) == "torch_save"
    assert detect_format(files.torchscript_file(tmp_path)) == "torchscript"
    assert detect_format(files.export_file(tmp_path)) == "torch_export"
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"x": 1}))
    assert detect_format(path) == "pickle"


def test_convert_convs_leaves_shared_weights_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):  # the same weight twice: one module could not stand for both
            return self.conv(self.conv(x))

    program = torch.export.export(Shared(), (torch.rand(2, 2, 8, 8),))
    module = torch.fx.GraphModule(program.module(), program.module().graph)
    assert convert_convs(module) == []
    unshared = torch.export.export(nn.Sequential(nn.Conv2d(2, 2, 3)), (torch.rand(2, 2, 8, 8),))
    module = torch.fx.GraphModule(unshared.module(), unshared.module().graph)
    assert convert_convs(module) == ["0"]
