"""The committed checkpoints in models/: each loads, its card matches it, and a quick
re-measurement on the committed Fashion-MNIST slice agrees with what the card says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from gdws_export.attacks import AttackConfig, run_attack
from gdws_export.harness.data import load_dataset
from gdws_export.models import load_model

MODELS = Path(__file__).resolve().parents[1] / "models"
SLICE = Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz"
CHECKPOINTS = sorted(MODELS.glob("*.pt"))
MAX_FILE_BYTES = 8_000_000  # small enough to commit (the width-32 VGG-16 is stored in float16)
BATCH = 200  # the batch size evaluate_checkpoint.py measured with (attack seeds per batch)


def _card(checkpoint: Path) -> dict:
    return json.loads(checkpoint.with_suffix(".json").read_text())


def _correct(model, x, y, attack):
    correct = 0
    for start in range(0, len(x), BATCH):
        xb, yb = x[start : start + BATCH], y[start : start + BATCH]
        if attack is not None:
            xb = run_attack(model, xb, yb, attack)
        with torch.no_grad():
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct


@pytest.fixture(scope="module")
def slice_data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: extra threads only slow them on a shared CPU
    yield load_dataset(SLICE)
    torch.set_num_threads(threads)


def test_models_folder_has_three_architectures_and_a_default():
    archs = {_card(path)["arch"] for path in CHECKPOINTS}
    assert {"preact_resnet18", "vgg16_bn", "wrn28_4"} <= archs
    default = json.loads((MODELS / "default.json").read_text())
    assert (MODELS / default["checkpoint"]).is_file()
    assert _card(MODELS / default["checkpoint"])["name"] == default["name"]
    index = (MODELS / "README.md").read_text()
    for path in CHECKPOINTS:
        assert f"[{path.stem}]({path.stem}.md)" in index
        assert path.with_suffix(".md").is_file()


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=[p.stem for p in CHECKPOINTS])
def test_checkpoint_matches_its_card(checkpoint, slice_data):
    card = _card(checkpoint)
    assert checkpoint.stat().st_size <= MAX_FILE_BYTES
    assert card["file_bytes"] == checkpoint.stat().st_size
    assert card["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model = load_model(checkpoint)
    assert card["name"] == checkpoint.stem and card["checkpoint"] == checkpoint.name
    assert card["arch"] == model.arch_name and card["arch_kwargs"] == model.arch_kwargs
    assert card["params"] == sum(p.numel() for p in model.parameters())
    assert all(v.dtype != torch.float64 for v in model.state_dict().values())
    training, evaluation = card["training"], card["evaluation"]
    assert training["eps"] == 0.1 and training["norm"] == "linf"
    assert "train_robust.py" in training["command"]
    assert evaluation["clean"]["samples"] == 10_000 and evaluation["pgd20"]["samples"] == 10_000
    assert evaluation["pgd100"]["samples"] >= 1000
    assert evaluation["pgd20"]["attack"].startswith("PGD-20 (L-inf, eps=0.1, step=0.01")
    assert evaluation["pgd100"]["attack"].startswith("PGD-100 (L-inf, eps=0.1, step=0.01")

    # Re-measure on the committed slice: the same numbers as the card's slice rows, up to
    # float noise, and close to its full-test-set numbers.
    x, y = slice_data
    clean = _correct(model, x, y, None) / len(x)
    pgd10 = AttackConfig.from_dict(evaluation["slice_pgd10"]["config"])
    n = evaluation["slice_pgd10"]["samples"]
    robust = _correct(model, x[:n], y[:n], pgd10) / n
    assert clean == pytest.approx(evaluation["slice_clean"]["accuracy"], abs=0.005)
    assert robust == pytest.approx(evaluation["slice_pgd10"]["accuracy"], abs=0.03)
    assert clean == pytest.approx(evaluation["clean"]["accuracy"], abs=0.04)
    # 100 images: a standard error of about 5 points, and PGD-10 is a little weaker than PGD-20.
    assert robust == pytest.approx(evaluation["pgd20"]["accuracy"], abs=0.15)
    # Robust, not merely accurate: an undefended net scores about 0 % at eps 0.1.
    assert 0.5 < robust < clean
    assert evaluation["pgd20"]["accuracy"] > 0.5
    assert evaluation["pgd20"]["accuracy"] < evaluation["clean"]["accuracy"]
    # The stronger attack on the first 1000 images does not do better than PGD-20 overall
    # (up to the difference between those images and the whole set).
    assert evaluation["pgd100"]["accuracy"] <= evaluation["pgd20"]["accuracy"] + 0.03
