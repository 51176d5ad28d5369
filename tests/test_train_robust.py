"""The adversarial training loop and script: schedule, perturbation, resumption, saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import train_robust
from benchmarks._checkpoint_eval import evaluate_checkpoint
from benchmarks._model_card import ModelCard
from benchmarks._robust_training import (
    TrainConfig,
    build_model,
    learning_rate,
    perturb,
    select_epoch,
    split_data,
    train,
)
from gdws_export.errors import InvalidInputError
from gdws_export.harness.data import load_dataset
from gdws_export.models import load_model

SLICE = Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz"
CONFIG = TrainConfig(
    arch="lenet", width=4, epochs=2, batch_size=64, train_samples=256, val_samples=100
)


@pytest.fixture(scope="module")
def data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only slow them on a shared CPU
    x, y = load_dataset(SLICE)
    yield split_data(x, y, CONFIG)
    torch.set_num_threads(threads)


def test_learning_rate_is_a_triangle():
    assert learning_rate(0, 100, 0.2) == 0.0
    assert learning_rate(40, 100, 0.2) == pytest.approx(0.2)
    assert learning_rate(20, 100, 0.2) == pytest.approx(0.1)
    assert learning_rate(70, 100, 0.2) == pytest.approx(0.1)
    assert learning_rate(100, 100, 0.2) == 0.0


def test_split_holds_out_the_last_images(data):
    assert len(data.x_train) == 256 and len(data.x_val) == 100
    x, _ = load_dataset(SLICE)
    assert torch.equal(data.x_val, x[-100:])
    assert torch.equal(data.x_train, x[:256])
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        split_data(
            x, x[:, 0, 0, 0].long(), TrainConfig("lenet", 4, batch_size=1000, val_samples=100)
        )
    with pytest.raises(InvalidInputError, match="leaves no training images"):
        split_data(x, x[:, 0, 0, 0].long(), TrainConfig("lenet", 4, val_samples=1000))


def test_fgsm_perturbation_stays_in_the_ball_and_box(data):
    model = build_model(CONFIG).train()
    x, y = data.x_train[:32], data.y_train[:32]
    x_adv = perturb(model, x, y, CONFIG, torch.Generator().manual_seed(0))
    eps = CONFIG.resolved_eps
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # A signed step of 1.25 * eps from a start inside the ball lands at least 0.25 * eps from
    # x, and often on the ball's surface, wherever the box does not clip it.
    inside = (x > eps) & (x < 1 - eps)
    distance = (x_adv - x)[inside].abs()
    assert (distance >= 0.25 * eps - 1e-6).float().mean() > 0.99
    assert (distance >= eps - 1e-6).float().mean() > 0.3
    assert model.training
    # It is adversarial: the loss rises (LeNet has no batch norm, so train mode changes nothing).
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(x_adv), y) > loss(model(x), y)
    again = perturb(model, x, y, CONFIG, torch.Generator().manual_seed(0))
    assert torch.equal(again, x_adv)


def test_resumed_run_equals_uninterrupted_run(data, tmp_path):
    whole = train(CONFIG, data, tmp_path / "whole" / "state.pt", progress=False)

    part = tmp_path / "part" / "state.pt"
    first = train(CONFIG, data, part, stop_after_epochs=1, progress=False)
    assert first["epoch"] == 1 and len(first["history"]) == 1
    saved = torch.load(part, weights_only=True)
    assert saved["epoch"] == 1
    resumed = train(CONFIG, data, part, progress=False)

    assert resumed["epoch"] == whole["epoch"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_robust"] == b["val_robust"]
    # The weights did move away from their initialisation.
    initial = build_model(CONFIG).state_dict()
    assert not torch.equal(initial["features.0.weight"], resumed["model"]["features.0.weight"])


def test_resume_refuses_other_settings(data, tmp_path):
    state = tmp_path / "state.pt"
    train(CONFIG, data, state, stop_after_epochs=1, progress=False)
    other = TrainConfig(**{**CONFIG.__dict__, "max_lr": 0.05})
    with pytest.raises(InvalidInputError, match="max_lr"):
        train(other, data, state, progress=False)


def test_saved_checkpoint_and_card(data, tmp_path):
    state = train(CONFIG, data, tmp_path / "state.pt", progress=False)
    path = train_robust.save_trained(
        CONFIG, state, data, tmp_path / "models", "tiny", device="cpu", threads=1, notes="why"
    )
    model = load_model(path)
    assert model.arch_name == "lenet" and model.arch_kwargs["width"] == 4
    assert state["best"]["val_robust"] == max(h["val_robust"] for h in state["history"])
    epoch, weights = select_epoch(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    card = json.loads((tmp_path / "models" / "tiny.json").read_text())
    assert card["arch"] == "lenet" and card["checkpoint"] == "tiny.pt"
    assert card["training"]["eps"] == 0.1 and card["training"]["selected_epoch"] == epoch
    assert "--arch lenet --width 4" in card["training"]["command"]
    assert "--name tiny" in card["training"]["command"]
    assert card["params"] == sum(p.numel() for p in model.parameters())
    assert card["file_bytes"] == path.stat().st_size
    assert (tmp_path / "models" / "README.md").read_text().count("tiny") >= 2


def test_half_precision_checkpoint_is_saved_rounded_and_says_so(data, tmp_path):
    state = train(CONFIG, data, tmp_path / "state.pt", progress=False)
    path = train_robust.save_trained(
        CONFIG, state, data, tmp_path / "models", "tiny", device="cpu", threads=1,
        weights_dtype="float16",
    )  # fmt: skip
    _, weights = select_epoch(state)
    for key, value in load_model(path).state_dict().items():
        expected = weights[key].half().float() if weights[key].is_floating_point() else weights[key]
        assert torch.equal(value, expected), key
    training = json.loads((tmp_path / "models" / "tiny.json").read_text())["training"]
    assert training["weights_stored_as"] == "float16"
    assert training["command"].endswith("--name tiny --weights-dtype float16")


def test_select_epoch_keeps_the_last_unless_robustness_collapsed():
    def state(robust):
        history = [{"epoch": i + 1, "val_robust": r} for i, r in enumerate(robust)]
        best = max(history, key=lambda h: h["val_robust"])
        return {
            "epoch": len(robust),
            "model": "last",
            "history": history,
            "best": {"epoch": best["epoch"], "val_robust": best["val_robust"], "model": "best"},
        }

    assert select_epoch(state([0.6, 0.79, 0.792, 0.79])) == (4, "last")
    assert select_epoch(state([0.6, 0.75, 0.05])) == (2, "best")


def test_pgd_training_perturbation(data):
    config = TrainConfig(**{**CONFIG.__dict__, "attack": "pgd", "attack_steps": 3})
    model = build_model(config).train()
    x, y = data.x_train[:16], data.y_train[:16]
    x_adv = perturb(model, x, y, config, torch.Generator().manual_seed(0))
    assert config.resolved_step == pytest.approx(2.5 * 0.1 / 3)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    assert model.training  # back in train mode for the update


def test_evaluation_updates_the_card(data, tmp_path):
    state = train(CONFIG, data, tmp_path / "state.pt", stop_after_epochs=1, progress=False)
    folder = tmp_path / "models"
    path = train_robust.save_trained(CONFIG, state, data, folder, "tiny", device="cpu", threads=1)
    card = evaluate_checkpoint(path, only="slice", progress=False)
    assert set(card.evaluation) == {"slice_clean", "slice_pgd10"}
    clean, robust = card.evaluation["slice_clean"], card.evaluation["slice_pgd10"]
    assert (clean.samples, robust.samples) == (1000, 100)
    x, y = load_dataset(SLICE)
    model = load_model(path)
    with torch.no_grad():
        assert clean.correct == int((model(x).argmax(1) == y).sum())
    assert robust.attack == "PGD-10 (L-inf, eps=0.1, step=0.025, 1 restart, random start, seed 0)"
    # The JSON card round-trips, and the Markdown card and the index show the measurements.
    assert ModelCard.load(folder / "tiny.json") == card
    assert f"{100 * clean.accuracy:.2f} %" in (folder / "tiny.md").read_text()
    # LeNet width 4 on 28 x 28: conv 4*1*25*28*28 + conv 8*4*25*14*14 + fc 392*32 + fc 32*10.
    assert card.macs == 78_400 + 156_800 + 12_544 + 320
    # Saving other weights under the same name drops the measurements of the old file.
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    changed = {**state, "model": weights}
    train_robust.save_trained(CONFIG, changed, data, folder, "tiny", device="cpu", threads=1)
    assert ModelCard.load(folder / "tiny.json").evaluation == {}
