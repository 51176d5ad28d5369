"""Tests of the architecture registry, the in-model normalization and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.models import (
    ModelArgs,
    ModelConfig,
    Normalize,
    create_model,
    list_models,
    load_checkpoint,
    load_model,
    model_config,
    models_dir,
    read_checkpoint,
    register_model,
    save_checkpoint,
)

# Narrow widths so that every forward pass is cheap on a 2-core CPU.
SMALL_WIDTH = {
    "lenet": 4,
    "preact_resnet18": 4,
    "resnet18": 4,
    "vgg16_bn": 4,
    "wrn28_4": 4,
    "wrn28_10": 4,
}

# Published parameter counts of the CIFAR-10 versions.
PUBLISHED_PARAMS = {
    "preact_resnet18": 11.17e6,
    "resnet18": 11.17e6,
    "vgg16_bn": 14.73e6,
    "wrn28_4": 5.85e6,
    "wrn28_10": 36.48e6,
}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_model(name: str = "lenet", **kwargs) -> nn.Module:
    return create_model(name, width=SMALL_WIDTH[name], **kwargs)


def test_every_architecture_is_registered():
    assert set(list_models()) == set(SMALL_WIDTH)
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(SMALL_WIDTH))
def test_forward_at_32_and_28(name):
    model = small_model(name)
    assert not model.training
    assert model.input_shape == (3, 32, 32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)

    gray = small_model(name, in_channels=1, input_size=28, num_classes=7)
    assert gray.input_shape == (1, 28, 28)
    out = gray(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_published(name):
    with torch.device("meta"):  # no memory, no init: only shapes matter here
        model = create_model(name)
    assert count_params(model) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(SMALL_WIDTH))
def test_width_scales_params(name):
    with torch.device("meta"):
        full = create_model(name)
        narrow = create_model(name, width=SMALL_WIDTH[name])
        wider = create_model(name, width=2 * SMALL_WIDTH[name])
    assert count_params(narrow) < count_params(wider) < count_params(full)


def test_arch_kwargs_recreate_the_same_architecture():
    model = small_model("wrn28_4", num_classes=5, dropout=0.1, mean=[0.5] * 3, std=[0.2] * 3)
    kwargs = json.loads(json.dumps(model.arch_kwargs))
    assert kwargs == model.arch_kwargs
    assert kwargs["dropout"] == 0.1 and kwargs["width"] == 4 and kwargs["mean"] == [0.5] * 3
    again = create_model(model.arch_name, **kwargs)
    assert model.arch_name == "wrn28_4"
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]


def test_default_width_comes_from_the_config():
    model = create_model("lenet")
    assert model.arch_kwargs["width"] == model_config("lenet").default_width == 16
    assert model.features[0].out_channels == 16 and model.features[3].out_channels == 32


def test_normalize_matches_formula_and_is_identity_without_stats():
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalize(mean, std)(x), expected)
    assert torch.equal(Normalize()(x), x)
    assert Normalize(mean, std).state_dict() == {}  # not persistent, see Normalize


@pytest.mark.parametrize(
    "mean, std",
    [([0.5, 0.5], [0.5]), ([0.5], None), ([0.5], [0.0]), ([float("nan")], [1.0]), (["a"], [1])],
)
def test_normalize_rejects_bad_stats(mean, std):
    with pytest.raises(InvalidInputError, match="Normalize"):
        Normalize(mean, std)


@pytest.mark.parametrize("name", sorted(SMALL_WIDTH))
def test_normalize_is_the_first_submodule_and_applies(name):
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]
    normalized = small_model(name, mean=mean, std=std)
    plain = small_model(name)
    assert next(iter(normalized.named_children()))[0] == "normalize"
    normalized.load_state_dict(plain.state_dict())  # same keys: the stats are not in it
    x = torch.rand(2, 3, 32, 32)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized(x), plain(manual))


def test_mean_must_have_one_value_per_channel():
    with pytest.raises(InvalidInputError, match="in_channels is 1"):
        create_model("lenet", in_channels=1, mean=[0.5] * 3, std=[0.5] * 3)


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(InvalidInputError) as info:
        create_model("resnet81")
    message = str(info.value)
    assert "did you mean 'resnet18'" in message
    assert all(name in message for name in list_models())
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"colour": 1}, "unknown arguments colour"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"width": 2.5}, "width must be a positive integer"),
        ({"in_channels": True}, "in_channels must be a positive integer"),
        ({"input_size": 3}, "input_size must be at least 4"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        create_model("lenet", **kwargs)


def test_register_model_refuses_duplicates_and_bad_builders():
    def builder(*, num_classes, in_channels, width, input_size, mean, std):
        raise AssertionError("never called")

    with pytest.raises(InvalidInputError, match="already registered"):
        register_model(ModelConfig("lenet", "dup", default_width=4))(builder)

    def lacking(*, num_classes, in_channels, width):
        raise AssertionError("never called")

    with pytest.raises(InvalidInputError, match="must accept input_size, mean, std"):
        register_model(ModelConfig("test_lacking", "bad", default_width=4))(lacking)
    assert "test_lacking" not in list_models()


def test_save_and_load_round_trip(tmp_path):
    model = small_model("preact_resnet18", num_classes=4, mean=[0.5] * 3, std=[0.25] * 3)
    model.train()
    model(torch.rand(8, 3, 32, 32))  # move BatchNorm running stats off their init values
    model.eval()
    path = save_checkpoint(model, tmp_path / "net.pt", epoch=3, dataset="test")
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]  # no temporary file left

    x = torch.rand(3, 3, 32, 32)
    restored = load_model(path)
    assert restored.arch_name == "preact_resnet18"
    assert restored.arch_kwargs == model.arch_kwargs
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)

    fresh = create_model("preact_resnet18", width=4, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3)
    assert not torch.equal(fresh(x), model(x))
    assert load_checkpoint(fresh, path) == {"epoch": 3, "dataset": "test"}
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_half_precision_storage_halves_the_file_and_loads_the_rounded_weights(tmp_path):
    model = small_model("vgg16_bn", num_classes=4, mean=[0.5] * 3, std=[0.25] * 3)
    model.train()
    model(torch.rand(8, 3, 32, 32))  # BatchNorm running stats off their init values
    model.eval()
    full = save_checkpoint(model, tmp_path / "full.pt")
    half = save_checkpoint(model, tmp_path / "half.pt", weights_dtype=torch.float16)
    stored = read_checkpoint(half).state_dict
    assert stored["classifier.weight"].dtype == torch.float16
    assert stored["features.1.num_batches_tracked"].dtype == torch.int64  # integers as they are
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.6

    restored = load_model(half)
    for key, value in restored.state_dict().items():
        expected = model.state_dict()[key]
        assert value.dtype == expected.dtype  # cast back to the model's float32
        if value.is_floating_point():
            torch.testing.assert_close(value, expected.half().float(), rtol=0, atol=0)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(restored(x), model(x), rtol=1e-2, atol=1e-2)


def test_save_overwrites_and_refuses_bad_metadata(tmp_path):
    path = tmp_path / "sub" / "net.pt"
    save_checkpoint(small_model(), path, note="first")
    with pytest.raises(InvalidInputError, match="JSON-serializable"):
        save_checkpoint(small_model(), path, note=object())
    assert read_checkpoint(path).metadata == {"note": "first"}  # untouched by the failure
    save_checkpoint(small_model(), path, note="second")
    assert read_checkpoint(path).metadata == {"note": "second"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.pt"]


def test_save_needs_a_registry_model(tmp_path):
    with pytest.raises(InvalidInputError, match="create_model"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x.pt")


def test_checkpoint_by_bare_name_resolves_in_models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GDWS_EXPORT_MODELS", str(tmp_path))
    assert models_dir() == tmp_path
    model = small_model()
    save_checkpoint(model, tmp_path / "tiny_lenet.pt")
    x = torch.rand(2, 3, 32, 32)
    loaded = create_model("lenet", width=4, checkpoint="tiny_lenet")
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(load_model("tiny_lenet")(x), model(x), rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="available there: tiny_lenet"):
        create_model("lenet", width=4, checkpoint="tiny_lenot")


def test_default_models_dir_is_the_repository_models_folder(monkeypatch):
    monkeypatch.delenv("GDWS_EXPORT_MODELS", raising=False)
    assert models_dir() == Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "model_state_dict", "net"])
def test_plain_state_dicts_load_with_dataparallel_prefix(tmp_path, wrapper):
    model = small_model()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 7}, tmp_path / "x.pth")
    fresh = small_model()
    assert load_checkpoint(fresh, tmp_path / "x.pth") == {}
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="plain state_dict"):
        load_model(tmp_path / "x.pth")


def test_mismatched_state_dict_names_the_keys(tmp_path):
    state = small_model("lenet", num_classes=5).state_dict()
    del state["features.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InvalidInputError) as info:
        load_checkpoint(small_model(), tmp_path / "bad.pt")
    message = str(info.value)
    assert "1 missing key (features.0.bias)" in message
    assert "1 unexpected key (extra.weight)" in message
    assert "classifier.3.weight (5, 32) in the file vs (10, 32) in the model" in message
    assert "bad.pt" in message and "\n" not in message


def test_many_missing_keys_are_counted_not_all_listed(tmp_path):
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InvalidInputError, match=r"missing keys \(.*, \.\.\. \d+ more\)"):
        load_checkpoint(small_model("resnet18"), tmp_path / "other.pt")


def test_project_checkpoint_must_match_arch_and_arguments(tmp_path):
    path = save_checkpoint(small_model("lenet", mean=[0.5] * 3, std=[0.5] * 3), tmp_path / "a.pt")
    with pytest.raises(InvalidInputError, match="holds a 'lenet' model, not 'resnet18'"):
        create_model("resnet18", width=4, checkpoint=path)
    # mean/std are not in the state_dict, so only this check catches a wrong normalization
    with pytest.raises(InvalidInputError, match=r"mean=\[0.5, 0.5, 0.5\] in the file vs None"):
        create_model("lenet", width=4, checkpoint=path)


def test_missing_and_corrupt_files_are_reported(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_checkpoint(small_model(), tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InvalidInputError, match="junk.pt cannot be read"):
        load_checkpoint(small_model(), tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(InvalidInputError, match="holds a list, not a state_dict"):
        load_checkpoint(small_model(), tmp_path / "list.pt")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "nostate.pt")
    with pytest.raises(InvalidInputError, match="holds no state_dict"):
        load_checkpoint(small_model(), tmp_path / "nostate.pt")


def test_pickled_modules_are_refused(tmp_path):
    torch.save(small_model(), tmp_path / "whole.pt")
    with pytest.raises(InvalidInputError, match="weights_only"):
        load_checkpoint(small_model(), tmp_path / "whole.pt")


def test_saving_identical_weights_gives_identical_files(tmp_path):
    from gdws_export.models import create_model, save_checkpoint

    model = create_model("lenet", in_channels=1, input_size=28)
    save_checkpoint(model, tmp_path / "a.pt")
    save_checkpoint(model, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_register_model_takes_model_args_builders(monkeypatch):
    from gdws_export.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave no test entry

    def tiny(args, depth=1):
        assert args == ModelArgs(2, 1, 4, 8, None, None) and depth == 3
        return nn.Linear(1, 1)

    register_model(ModelConfig("test_model_args", "tiny", default_width=4))(tiny)
    model = create_model("test_model_args", num_classes=2, in_channels=1, input_size=8, depth=3)
    assert model.arch_kwargs["depth"] == 3 and model.input_shape == (1, 8, 8)

    def no_default(args, depth):
        raise AssertionError("never called")

    with pytest.raises(InvalidInputError, match="must give defaults to depth"):
        register_model(ModelConfig("test_no_default", "bad", default_width=4))(no_default)


BUNDLED_LOGITS = Path(__file__).parent / "data" / "bundled_checkpoint_logits.json"


def test_bundled_checkpoints_give_their_recorded_logits():
    # Module names are the checkpoints' state_dict keys: a refactor of the architectures must
    # keep every bundled checkpoint loading, and computing what it computed when recorded.
    from gdws_export.harness.data import load_dataset

    recorded = json.loads(BUNDLED_LOGITS.read_text())
    checkpoints = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.pt"))
    assert sorted(recorded) == [path.stem for path in checkpoints]
    x, _ = load_dataset(Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz", limit=4)
    for path in checkpoints:
        with torch.no_grad():
            logits = load_model(path)(x)
        expected = torch.tensor(recorded[path.stem])
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4, msg=path.stem)
