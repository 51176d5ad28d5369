"""Accuracy evaluation on a real model and real data: attack invariants, transfer replay on
ONNX Runtime, Square through the engine, reproducibility and bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from _trained import export_legacy, trained_lenet

from gdws_export.attacks import AttackConfig, run_attack
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import (
    SquareConfig,
    attack_batched,
    evaluate_accuracy,
    predict_batched,
)
from gdws_export.runtimes import OrtRunner
from gdws_export.runtimes.base import Runner, TensorSpec


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """(model, x, y, path of its ONNX export) with 200 held-out Fashion-MNIST images."""
    model, x, y = trained_lenet()
    path = export_legacy(model, tmp_path_factory.mktemp("accuracy") / "lenet.onnx")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster on the shared CPU
    yield model, x, y, path
    torch.set_num_threads(threads)


def engine(path) -> OrtRunner:
    return OrtRunner(path, threads=1)


def test_clean_accuracy_matches_a_direct_count(lenet):
    model, x, y, _ = lenet
    report = evaluate_accuracy({"lenet": model}, x, y, attacks=[], batch_size=64)
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert report.model("lenet").clean_accuracy == pytest.approx(expected)
    assert expected > 0.7  # the fixture really learned
    assert report.samples == 200 and report.model("lenet").attacks == []


def test_only_the_images_right_clean_are_attacked(lenet):
    model, x, y, _ = lenet
    config = AttackConfig("pgd", eps=0.05, steps=3, seed=0)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    assert 0 < int((~right).sum()) < len(y)  # both kinds present

    x_adv = attack_batched(model, x, y, config, batch_size=64)

    assert torch.equal(x_adv[~right], x[~right])  # wrong already: left as they are
    # the right ones as attacked directly, 64 at a time in their own order
    xr, yr = x[right], y[right]
    expected = torch.cat([run_attack(model, xr[i : i + 64], yr[i : i + 64], config)
                          for i in range(0, len(yr), 64)])  # fmt: skip
    assert torch.equal(x_adv[right], expected)
    assert not torch.equal(expected, xr) and (expected - xr).abs().max() <= 0.05 + 1e-6


def test_zero_eps_reproduces_clean_accuracy_on_pytorch_and_engine(lenet):
    model, x, y, path = lenet
    attacks = [AttackConfig("pgd", eps=0.0, steps=3), AttackConfig("fgsm", eps=0.0)]
    report = evaluate_accuracy({"m": model}, x, y, attacks=attacks, engines={"m": engine(path)})
    result = report.model("m")
    for attack in result.attacks:
        assert attack.robust_accuracy == result.clean_accuracy
        assert attack.engine_accuracy == result.engine_clean_accuracy
        assert attack.max_perturbation == 0.0


def test_larger_eps_never_raises_accuracy_and_robust_never_exceeds_clean(lenet):
    model, x, y, _ = lenet
    epsilons = [0.0, 0.02, 0.05, 0.1]
    attacks = [AttackConfig("pgd", eps=eps, steps=10, seed=0) for eps in epsilons]
    result = evaluate_accuracy({"m": model}, x, y, attacks=attacks).model("m")
    robust = [attack.robust_accuracy for attack in result.attacks]
    assert robust == sorted(robust, reverse=True)
    assert all(r <= result.clean_accuracy for r in robust)
    assert robust[-1] < result.clean_accuracy - 0.3  # the attack really bites
    for attack, eps in zip(result.attacks, epsilons, strict=True):
        assert attack.max_perturbation <= eps + 1e-6


@pytest.mark.parametrize(
    "config",
    [AttackConfig("pgd", norm="linf", eps=0.05, steps=10), AttackConfig("pgd", norm="l2", eps=1.0)],
    ids=["pgd-linf", "pgd-l2"],
)
def test_transfer_replay_on_onnx_runtime_within_half_a_point(lenet, config):
    model, x, y, path = lenet
    result = evaluate_accuracy({"m": model}, x, y, attacks=[config], engines={"m": engine(path)})
    m = result.model("m")
    attack = m.attack(config.describe())
    assert attack.robust_accuracy < m.clean_accuracy - 0.1  # a real attack, not a no-op
    assert abs(attack.engine_accuracy - attack.robust_accuracy) * 100 <= 0.5
    assert attack.transfer_gap_points == pytest.approx(
        100 * (attack.engine_accuracy - attack.robust_accuracy)
    )
    assert abs(m.engine_clean_accuracy - m.clean_accuracy) * 100 <= 0.5
    assert attack.agreement >= 0.99
    assert m.engine["runtime"] == "onnxruntime"


def test_square_attack_through_the_engine(lenet):
    model, x, y, path = lenet
    square = SquareConfig(eps=0.1, queries=60, seed=0)
    result = evaluate_accuracy(
        {"m": model}, x[:100], y[:100], attacks=[], engines={"m": engine(path)}, square=square
    ).model("m")
    attack = result.attack("square")
    assert attack.target == "engine" and attack.norm == "linf" and attack.steps == 60
    assert attack.robust_accuracy < result.engine_clean_accuracy - 0.05
    assert attack.max_perturbation <= 0.1 + 1e-6
    assert 1 <= attack.mean_queries <= 60
    assert attack.description == "Square-60 (L-inf, eps=0.1, p_init=0.05, seed 0)"


def test_square_without_engine_attacks_pytorch(lenet):
    model, x, y, _ = lenet
    square = SquareConfig(eps=0.1, queries=20)
    attack = evaluate_accuracy({"m": model}, x[:50], y[:50], attacks=[], square=square)
    assert attack.model("m").attack("square").target == "pytorch"


def test_same_seeds_give_the_same_report(lenet):
    model, x, y, path = lenet
    kwargs = {
        "attacks": [AttackConfig("pgd", eps=0.05, steps=3, restarts=2, seed=5)],
        "square": SquareConfig(eps=0.05, queries=20, seed=5),
    }
    first = evaluate_accuracy({"m": model}, x[:100], y[:100], engines={"m": engine(path)}, **kwargs)
    again = evaluate_accuracy({"m": model}, x[:100], y[:100], engines={"m": engine(path)}, **kwargs)
    assert first.to_dict() == again.to_dict()


def test_robustbench_style_description(lenet):
    model, x, y, _ = lenet
    config = AttackConfig("pgd", eps=8 / 255, steps=20)
    attack = evaluate_accuracy({"m": model}, x[:64], y[:64], attacks=[config]).model("m").attacks[0]
    assert (attack.norm, attack.eps, attack.steps, attack.samples) == ("linf", 8 / 255, 20, 64)
    assert attack.description.startswith("PGD-20 (L-inf, eps=8/255")
    assert attack.config == config.to_dict()


def test_model_is_evaluated_in_eval_mode_and_its_mode_restored(lenet):
    model, x, y, _ = lenet
    training = copy.deepcopy(model).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the attacks warn on training mode
        evaluate_accuracy({"m": training}, x[:32], y[:32], attacks=[AttackConfig(steps=2)])
    assert all(module.training for module in training.modules())


def test_markdown_lists_every_model_and_attack(lenet):
    model, x, y, path = lenet
    report = evaluate_accuracy(
        {"original": model, "copy": copy.deepcopy(model)}, x[:32], y[:32],
        attacks=[AttackConfig(steps=2)], engines={"copy": engine(path)},
    )  # fmt: skip
    text = report.to_markdown()
    assert "| model | attack | target | samples |" in text
    assert "| original | PGD-2 (L-inf, eps=8/255" in text and "| copy | PGD-2" in text


class FixedBatchRunner(Runner):
    """An engine that only takes batches of 4; its 'logits' are per-image sums, 10 wide."""

    name = "fixed"

    def activate(self) -> None:
        self.batches = []

    def deactivate(self) -> None:
        pass

    def inputs(self):
        return [TensorSpec("input", (4, 1, 28, 28), np.dtype(np.float32))]

    def outputs(self):
        return [TensorSpec("logits", (4, 10), np.dtype(np.float32))]

    def infer(self, feed):
        batch = feed["input"]
        assert batch.shape == (4, 1, 28, 28)
        self.batches.append(len(batch))
        return {"logits": np.repeat(batch.sum(axis=(1, 2, 3))[:, None], 10, axis=1)}


def test_fixed_batch_engine_is_padded_and_trimmed():
    x = np.random.default_rng(0).random((10, 1, 28, 28), dtype=np.float32)
    with FixedBatchRunner() as runner:
        logits = predict_batched(runner, x, batch_size=64)
        assert runner.batches == [4, 4, 4]
    np.testing.assert_allclose(logits[:, 0], x.sum(axis=(1, 2, 3)), rtol=1e-5)
    assert logits.shape == (10, 10)


def _one_line_error(call, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_engine_that_does_not_match_the_data_shape(lenet):
    model, x, y, path = lenet
    _one_line_error(
        lambda: evaluate_accuracy(
            {"m": model}, x[:, :, :14, :14].contiguous(), y, attacks=[], engines={"m": engine(path)}
        ),
        r"engine 'm' takes inputs \('batch', 1, 28, 28\) but the data are images \(1, 14, 14\)",
    )


def test_empty_dataset(lenet):
    model, x, y, _ = lenet
    _one_line_error(lambda: evaluate_accuracy({"m": model}, x[:0], y[:0]), "empty")


def test_labels_out_of_range(lenet):
    model, x, y, _ = lenet
    bad = y.clone()
    bad[3] = 10
    _one_line_error(lambda: evaluate_accuracy({"m": model}, x, bad, attacks=[]), r"\[0, 9\]")
    bad[3] = -1
    _one_line_error(lambda: evaluate_accuracy({"m": model}, x, bad, attacks=[]), ">= 0")


def test_bad_attack_settings():
    _one_line_error(lambda: AttackConfig("pgd", eps=-0.1), "eps")
    _one_line_error(lambda: AttackConfig("pgd", steps=0), "steps")
    _one_line_error(lambda: SquareConfig(eps=-0.1), "eps")
    _one_line_error(lambda: SquareConfig(queries=0), "queries")


def test_engine_without_a_model_of_its_name(lenet):
    model, x, y, path = lenet
    _one_line_error(
        lambda: evaluate_accuracy({"m": model}, x, y, engines={"other": engine(path)}),
        "engines",
    )


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no "model in training mode" warning
def test_a_torch_export_program_is_evaluated_as_the_model(lenet, tmp_path):
    """A `.pt2` (gdws-export's own gdws.pt2 is one) refuses `.eval()`: it runs as exported."""
    from gdws_export.runtimes.torch_program import export_program, load_program

    model, x, y, _ = lenet
    program = load_program(export_program(model, x[:2], tmp_path / "lenet.pt2"))
    config = AttackConfig("pgd", eps=0.05, steps=3, seed=0)
    report = evaluate_accuracy({"lenet": program}, x[:64], y[:64], attacks=[config])
    expected = evaluate_accuracy({"lenet": model}, x[:64], y[:64], attacks=[config])
    got, want = report.model("lenet"), expected.model("lenet")
    assert got.clean_accuracy == want.clean_accuracy
    assert got.attacks[0].robust_accuracy == pytest.approx(
        want.attacks[0].robust_accuracy, abs=0.02
    )
