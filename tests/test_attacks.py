"""Attacks against a small CNN trained on the committed Fashion-MNIST slice."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.attacks import (
    AttackConfig,
    CalibrationConfig,
    fgsm,
    pgd,
    run_attack,
    square_attack,
)
from gdws_export.errors import InvalidInputError
from gdws_export.harness.data import load_dataset

SLICE = Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz"
TRAIN = 800  # the first 800 images train the model, the other 200 evaluate it


@pytest.fixture(scope="module")
def trained():
    """A two-conv CNN trained for a second or two; yields (model in eval mode, x, y)."""
    # One thread: these are many small ops, which extra threads slow down on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, y = load_dataset(SLICE)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(8):
        perm = torch.randperm(TRAIN, generator=order)
        for start in range(0, TRAIN, 32):
            batch = perm[start : start + 32]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.zero_grad(set_to_none=True)
    yield model.eval(), x[TRAIN:], y[TRAIN:]
    torch.set_num_threads(threads)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_trained_model_is_accurate(trained):
    model, x, y = trained
    assert accuracy(model, x, y) > 0.75


def test_pgd_with_zero_eps_returns_the_clean_inputs(trained):
    model, x, y = trained
    x_adv = pgd(model, x, y, eps=0.0, generator=seeded())
    assert torch.equal(x_adv, x)
    assert accuracy(model, x_adv, y) == accuracy(model, x, y)


def test_pgd_accuracy_does_not_grow_with_eps(trained):
    model, x, y = trained
    accuracies = [
        accuracy(model, pgd(model, x, y, eps=eps, steps=10, generator=seeded()), y)
        for eps in (0.0, 0.05, 0.1, 0.2)
    ]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] < accuracies[0] - 0.5  # and it really drops


def test_pgd20_breaks_the_undefended_model(trained):
    model, x, y = trained
    x_adv = pgd(model, x, y, eps=0.3, steps=20, generator=seeded())
    assert accuracy(model, x_adv, y) < 0.10


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("linf", 0.1), ("l2", 1.0)])
def test_pgd_is_at_least_as_strong_as_fgsm(trained, norm, eps):
    model, x, y = trained
    pgd_accuracy = accuracy(model, pgd(model, x, y, eps=eps, norm=norm, generator=seeded()), y)
    fgsm_accuracy = accuracy(model, fgsm(model, x, y, eps=eps, norm=norm), y)
    assert pgd_accuracy <= fgsm_accuracy
    assert fgsm_accuracy < accuracy(model, x, y)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_perturbations_stay_in_the_ball_and_the_box(trained, norm, eps, attack):
    model, x, y = trained
    if attack == "pgd":
        x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=10, generator=seeded())
    else:
        x_adv = fgsm(model, x, y, eps=eps, norm=norm)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    sizes = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert sizes.max() <= eps + 1e-6
    # The attack uses its budget (clipping to the box takes some of a single L2 step).
    assert sizes.median() > 0.5 * eps


def test_same_seed_gives_the_same_batch(trained):
    model, x, y = trained
    first = pgd(model, x, y, eps=0.1, norm="l2", steps=3, restarts=2, generator=seeded(7))
    second = pgd(model, x, y, eps=0.1, norm="l2", steps=3, restarts=2, generator=seeded(7))
    other = pgd(model, x, y, eps=0.1, norm="l2", steps=3, restarts=2, generator=seeded(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_restarts_keep_the_best_per_sample(trained):
    model, x, y = trained
    # Same seed: the first of three restarts is the single run, so three can only do better.
    one = pgd(model, x, y, eps=0.05, steps=5, restarts=1, generator=seeded(3))
    three = pgd(model, x, y, eps=0.05, steps=5, restarts=3, generator=seeded(3))
    with torch.no_grad():
        fooled_one = model(one).argmax(dim=1) != y
        fooled_three = model(three).argmax(dim=1) != y
        loss_one = F.cross_entropy(model(one), y, reduction="none")
        loss_three = F.cross_entropy(model(three), y, reduction="none")
    assert bool((fooled_three | ~fooled_one).all())  # nothing fooled once is lost
    assert torch.equal(three[fooled_one], one[fooled_one])  # fooled samples are not re-attacked
    robust = ~fooled_three
    assert bool((loss_three[robust] >= loss_one[robust] - 1e-6).all())


def test_pgd_leaves_the_model_untouched(trained):
    model, x, y = trained
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():  # evaluation code often disables autograd; the attack still works
        x_adv = pgd(model, x[:20], y[:20], eps=0.1, generator=seeded())
    with torch.inference_mode():
        x_inference = pgd(model, x[:20], y[:20], eps=0.1, generator=seeded())
    assert torch.equal(x_adv, x_inference)
    assert not torch.equal(x_adv, x[:20])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not model.training


def test_attacking_a_training_mode_model_warns(trained):
    model, x, y = trained
    model.train()
    try:
        with pytest.warns(RuntimeWarning, match="model.eval"):
            pgd(model, x[:4], y[:4], eps=0.1, steps=1)
    finally:
        model.eval()


def test_square_attack_through_a_numpy_predict_fn(trained):
    model, x, y = trained

    def predict(batch: np.ndarray) -> np.ndarray:  # what an ONNX Runtime session looks like
        assert isinstance(batch, np.ndarray) and batch.dtype == np.float32
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    x_np, y_np = x.numpy(), y.numpy()
    x_adv, used = square_attack(predict, x_np, y_np, eps=0.2, queries=300, generator=seeded())
    assert isinstance(x_adv, np.ndarray) and x_adv.dtype == np.float32
    assert np.abs(x_adv - x_np).max() <= 0.2 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean = accuracy(model, x, y)
    robust = accuracy(model, torch.from_numpy(x_adv), y)
    assert robust < clean - 0.3
    assert used.dtype == np.int64 and used.min() >= 1 and used.max() <= 300
    wrong = predict(x_adv).argmax(axis=1) != y_np
    assert wrong[used < 300].all()  # a sample stops being queried only once it is fooled
    assert (used[predict(x_np).argmax(axis=1) != y_np] == 1).all()


def test_square_attack_on_tensors_is_seeded(trained):
    model, x, y = trained
    x, y = x[:40], y[:40]
    first, used_first = square_attack(model, x, y, eps=0.1, queries=40, generator=seeded(1))
    second, used_second = square_attack(model, x, y, eps=0.1, queries=40, generator=seeded(1))
    assert isinstance(first, torch.Tensor) and first.shape == x.shape
    assert torch.equal(first, second) and torch.equal(used_first, used_second)
    assert (first - x).abs().max() <= 0.1 + 1e-6
    unchanged, used = square_attack(model, x, y, eps=0.0, queries=40)
    assert torch.equal(unchanged, x) and bool((used == 1).all())


def test_attack_config_describes_and_round_trips():
    config = AttackConfig("pgd", eps=8 / 255, steps=20, restarts=2, seed=3)
    assert config.describe() == (
        "PGD-20 (L-inf, eps=8/255, step=1/255, 2 restarts, random start, seed 3)"
    )
    assert AttackConfig("pgd", norm="l2", eps=0.5, step_size=0.1).describe() == (
        "PGD-10 (L2, eps=0.5, step=0.1, 1 restart, random start, seed 0)"
    )
    assert AttackConfig("fgsm", eps=0.3).describe() == "FGSM (L-inf, eps=0.3)"
    assert AttackConfig("none").describe() == "clean (no attack)"
    restored = AttackConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "cw"},
        {"norm": "l1"},
        {"eps": -0.1},
        {"eps": float("nan")},
        {"steps": 0},
        {"restarts": 0},
        {"step_size": 0.0},
        {"seed": -1},
        {"random_start": "yes"},
    ],
)
def test_attack_config_rejects_bad_fields(fields):
    with pytest.raises(InvalidInputError):
        AttackConfig(**fields)


def test_attack_config_rejects_unknown_keys():
    with pytest.raises(InvalidInputError, match="unknown keys"):
        AttackConfig.from_dict({"name": "pgd", "epsilon": 0.1})


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"attack": "fgsm"}, "attack must be 'pgd' or None"),
        ({"samples": 0}, "samples"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"steps": True}, "steps"),
        ({"eps": -0.1}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"seed": -1}, "seed"),
    ],
)
def test_calibration_config_rejects_bad_fields(fields, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        CalibrationConfig(**fields)


def test_calibration_config_resolves_keyword_overrides():
    base = CalibrationConfig(eps=0.1, samples=64)
    assert CalibrationConfig.resolve(None) == CalibrationConfig()
    assert CalibrationConfig.resolve(base, seed=3) == CalibrationConfig(eps=0.1, samples=64, seed=3)
    with pytest.raises(InvalidInputError, match=r"unknown calibration settings \['epsilon'\]"):
        CalibrationConfig.resolve(base, epsilon=0.1)
    with pytest.raises(InvalidInputError, match="must be a CalibrationConfig"):
        CalibrationConfig.resolve(AttackConfig())
    scaled = CalibrationConfig(eps=0.1, step_size=0.025).scaled(2)
    assert (scaled.eps, scaled.step_size) == pytest.approx((0.2, 0.05))
    assert CalibrationConfig(step_size=None).scaled(2).step_size is None


def test_run_attack_matches_the_functions_and_is_reproducible(trained):
    model, x, y = trained
    x, y = x[:50], y[:50]
    config = AttackConfig("pgd", eps=0.1, steps=5, restarts=2, seed=11)
    first = run_attack(model, x, y, config)
    assert torch.equal(first, run_attack(model, x, y, config))
    expected = pgd(model, x, y, eps=0.1, steps=5, restarts=2, generator=seeded(11))
    assert torch.equal(first, expected)
    assert torch.equal(
        run_attack(model, x, y, AttackConfig("fgsm", eps=0.1)), fgsm(model, x, y, eps=0.1)
    )
    assert torch.equal(run_attack(model, x, y, AttackConfig("none")), x)


def _bad_calls(x: torch.Tensor, y: torch.Tensor):
    """(arguments, expected message fragment) for pgd calls that must fail."""
    return [
        ({"x": x, "y": y, "eps": -0.1}, "eps"),
        ({"x": x, "y": y, "eps": float("nan")}, "eps"),
        ({"x": x, "y": y, "eps": float("inf")}, "eps"),
        ({"x": x, "y": y, "eps": 0.1, "steps": 0}, "steps"),
        ({"x": x, "y": y, "eps": 0.1, "norm": "l1"}, "norm"),
        ({"x": x, "y": y, "eps": 0.1, "step_size": -1.0}, "step_size"),
        ({"x": x * 2, "y": y, "eps": 0.1}, "[0, 1]"),
        ({"x": x - 0.5, "y": y, "eps": 0.1}, "[0, 1]"),
        ({"x": (x * 255).to(torch.uint8), "y": y, "eps": 0.1}, "float"),
        ({"x": x, "y": y + 10, "eps": 0.1}, "labels"),
        ({"x": x, "y": y - 20, "eps": 0.1}, "labels"),
        ({"x": x, "y": y[:-1], "eps": 0.1}, "shape"),
        ({"x": x, "y": y.float(), "eps": 0.1}, "integer"),
    ]


def test_bad_inputs_raise_one_line_errors(trained):
    model, x, y = trained
    x, y = x[:8], y[:8]
    for kwargs, fragment in _bad_calls(x, y):
        with pytest.raises(InvalidInputError, match=None) as info:
            pgd(model, **kwargs)
        message = str(info.value)
        assert fragment in message and "\n" not in message, (kwargs.keys(), message)
    with pytest.raises(InvalidInputError, match="eps"):
        fgsm(model, x, y, eps=-1.0)
    with pytest.raises(InvalidInputError, match="norm"):
        fgsm(model, x, y, eps=0.1, norm="l0")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": 0.1, "queries": 0}, "queries"),
        ({"eps": 0.1, "p_init": 1.5}, "p_init"),
        ({"eps": 0.1, "labels_offset": 10}, "labels"),
        ({"eps": 0.1, "flatten": True}, "(N, C, H, W)"),
        ({"eps": 0.1, "scale": 2.0}, "[0, 1]"),
    ],
)
def test_square_attack_rejects_bad_inputs(trained, kwargs, fragment):
    model, x, y = trained
    x, y = x[:8].numpy(), y[:8].numpy()
    x = x * kwargs.pop("scale", 1.0)
    x = x.reshape(len(x), -1) if kwargs.pop("flatten", False) else x
    y = y + kwargs.pop("labels_offset", 0)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    with pytest.raises(InvalidInputError, match=None) as info:
        square_attack(predict, x, y, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.gpu
def test_attacks_run_on_cuda_with_a_cpu_generator(trained):
    model, x, y = trained
    model_cuda = copy.deepcopy(model).cuda()
    x, y = x[:50].cuda(), y[:50].cuda()
    first = pgd(model_cuda, x, y, eps=0.1, steps=5, restarts=2, generator=seeded(4))
    second = pgd(model_cuda, x, y, eps=0.1, steps=5, restarts=2, generator=seeded(4))
    assert first.is_cuda and torch.equal(first, second)
    assert (first - x).abs().max() <= 0.1 + 1e-6
    x_square, used = square_attack(model_cuda, x, y, eps=0.1, queries=20, generator=seeded())
    assert x_square.is_cuda and used.is_cuda and (x_square - x).abs().max() <= 0.1 + 1e-6
