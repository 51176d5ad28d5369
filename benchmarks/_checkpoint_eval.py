"""Measuring a checkpoint's clean and robust accuracy for its model card: the library behind
`evaluate_checkpoint.py` and `train_robust.py` (which measures what it trains). What is
measured, and how, is in `evaluate_checkpoint.py`'s docstring.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks._model_card import (
    Measurement,
    ModelCard,
    count_params,
    write_index,
)
from gdws_export._files import file_sha256
from gdws_export.attacks import AttackConfig, run_attack
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.selection import count_macs
from gdws_export.harness.data import load_dataset
from gdws_export.models import load_model, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "data" / "fashion_mnist_test_1k.npz"
# PGD's step as a fraction of eps: 0.01 at Fashion-MNIST's eps 0.1, 0.03 at MNIST's 0.3, so
# that PGD-20 can cross the ball twice whatever eps is.
PGD_STEP_DIVISOR = 10
BATCH_SIZE = 200


@dataclass(frozen=True)
class MeasurementSpec:
    """What to measure: an attack (None: clean) on the first `samples` images of `data`."""

    key: str
    attack: AttackConfig | None
    data: str  # a named dataset's test split, or "slice"
    samples: int | None  # None: all


def standard_specs(dataset: str, eps: float) -> list[MeasurementSpec]:
    """The measurements of a complete card for a model trained at `eps` on `dataset`."""
    step = eps / PGD_STEP_DIVISOR
    pgd20 = AttackConfig("pgd", eps=eps, step_size=step, steps=20, restarts=1, seed=0)
    pgd100 = AttackConfig("pgd", eps=eps, step_size=step, steps=100, restarts=1, seed=0)
    specs = [
        MeasurementSpec("clean", None, dataset, None),
        MeasurementSpec("pgd20", pgd20, dataset, None),
        MeasurementSpec("pgd100", pgd100, dataset, 1000),
    ]
    return specs + slice_specs(dataset, eps)


def slice_specs(dataset: str, eps: float) -> list[MeasurementSpec]:
    """The quick check on the committed Fashion-MNIST slice (none for other datasets)."""
    if dataset != "fashion-mnist":
        return []
    pgd10 = AttackConfig("pgd", eps=eps, steps=10, restarts=1, seed=0)
    return [
        MeasurementSpec("slice_clean", None, "slice", None),
        MeasurementSpec("slice_pgd10", pgd10, "slice", 100),
    ]


def count_correct(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | None,
    *,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str = "cpu",
    desc: str | None = None,
) -> int:
    """Images still classified correctly after `attack` (None: clean), batch by batch.

    The model should already be on `device` and in eval mode; `run_attack` re-seeds each
    batch from the config's seed, so the result depends on the batch size.
    """
    correct = 0
    starts = range(0, len(x), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, **_tqdm_kwargs()):
        xb = _to_device(x[start : start + batch_size], device)
        yb = y[start : start + batch_size].to(device)
        if attack is not None:
            xb = run_attack(model, xb, yb, attack)
        with torch.no_grad():
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct


def measure(
    model: torch.nn.Module,
    spec: MeasurementSpec,
    images: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Measurement:
    """Run one `MeasurementSpec` on already loaded `images` (keyed by `spec.data`)."""
    x, y = images[spec.data]
    if spec.samples is not None:
        x, y = x[: spec.samples], y[: spec.samples]
    label = "clean (no attack)" if spec.attack is None else spec.attack.describe()
    start = time.perf_counter()
    correct = count_correct(
        model, x, y, spec.attack, device=device, desc=spec.key if progress else None
    )
    data = str(SLICE.relative_to(REPO)) if spec.data == "slice" else f"{spec.data} test"
    return Measurement(
        attack=label,
        config=None if spec.attack is None else spec.attack.to_dict(),
        data=data,
        samples=len(x),
        correct=correct,
        batch_size=BATCH_SIZE,
        seconds=round(time.perf_counter() - start, 1),
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    only: str = "all",
    device: str = "cpu",
    data_root: str | None = None,
    progress: bool = True,
) -> ModelCard:
    """Measure `checkpoint` and rewrite its card and the folder's index; returns the card.

    Args:
        checkpoint: a `.pt` file written by `train_robust.py` (its card is next to it).
        only: "all" for every measurement, "slice" for the quick slice check only.
        device: where the attacks run ("cpu" or "cuda").
        data_root: where the dataset's IDX files are, if not in a default place.
        progress: show a progress bar per measurement.
    """
    path = Path(checkpoint)
    card = refresh_card(path)
    dataset = card.data.get("dataset", "fashion-mnist")
    eps = float(card.training["eps"])
    specs = standard_specs(dataset, eps) if only == "all" else slice_specs(dataset, eps)
    if not specs:
        raise InvalidInputError(f"evaluate_checkpoint: nothing to measure for {only!r}")
    images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for spec in specs:
        if spec.data not in images:
            source = SLICE if spec.data == "slice" else spec.data
            images[spec.data] = load_dataset(source, split="test", root=data_root)
    model = prepare_model(load_model(path), device)
    for spec in specs:
        card.evaluation[spec.key] = measure(model, spec, images, device=device, progress=progress)
        card.save(path.parent)  # after each, so an interrupted run keeps what it measured
        print(f"{card.name} {spec.key}: {100 * card.evaluation[spec.key].accuracy:.2f} %")
    write_index(path.parent)
    return card


def refresh_card(path: Path) -> ModelCard:
    """The checkpoint's card with its size, hash, parameter and MAC counts brought up to date.

    A checkpoint without a card gets a new one from the metadata saved inside it; a card whose
    hash is not the file's loses its measurements, which were of another file.
    """
    card_path = path.with_suffix(".json")
    contents = read_checkpoint(path)
    if contents.arch is None or contents.arch_kwargs is None:
        raise InvalidInputError(
            f"evaluate_checkpoint: {path} is not in the project's checkpoint format; save it "
            "with gdws_export.models.save_checkpoint"
        )
    if card_path.is_file():
        card = ModelCard.load(card_path)
    else:
        metadata = contents.metadata
        card = ModelCard(
            name=path.stem,
            arch=contents.arch,
            arch_kwargs=contents.arch_kwargs,
            checkpoint=path.name,
            file_bytes=0,
            sha256="",
            params=0,
            macs=0,
            data=dict(metadata.get("data", {})),
            training=dict(metadata.get("training", {})),
        )
    model = load_model(path)
    card.arch, card.arch_kwargs, card.checkpoint = contents.arch, contents.arch_kwargs, path.name
    card.file_bytes = path.stat().st_size
    sha256 = file_sha256(path)
    if sha256 != card.sha256:
        card.evaluation = {}  # they measured another file
    card.sha256 = sha256
    card.params = count_params(model)
    card.macs = count_macs(model, model.input_shape)
    return card


def prepare_model(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """Eval mode, on `device`, channels-last (about 1.5-2x faster for these convs on CPU)."""
    return model.to(device).to(memory_format=torch.channels_last).eval()


def _to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return x.to(device).contiguous(memory_format=torch.channels_last)


def _tqdm_kwargs() -> dict[str, float]:
    # In a log file, a bar redrawn every 0.1 s would flood it; redraw twice a minute instead.
    return {} if sys.stderr.isatty() else {"mininterval": 30.0}
