"""Adversarial training of a registry architecture, resumable epoch by epoch: the loop behind
`train_robust.py`.

The default method is FGSM with a random start ("Fast is better than free", Wong et al. 2020):
per batch, a uniform random start in the L-inf ball, one signed-gradient step of 1.25 * eps
(model in train mode, as in the paper), then a training step on the perturbed images; SGD with
Nesterov momentum and a cyclic (triangular) learning rate, a function of the step so resuming
needs no scheduler state. `attack="pgd"` trains on PGD instead (Madry et al. 2018; slower).

After every epoch, `train` measures clean and PGD-10 accuracy on held-out validation images
and saves its whole state (weights, optimizer, history) atomically; started again with the same
config it continues from the last finished epoch. Every epoch draws its shuffling and random
starts from a generator seeded by (seed, epoch), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchmarks._checkpoint_eval import count_correct
from gdws_export.attacks import AttackConfig, pgd
from gdws_export.errors import InvalidInputError
from gdws_export.harness.data import load_train_and_test
from gdws_export.models import create_model

# Per-dataset defaults: name prefix, standard L-inf eps, training-set mean/std (computed on
# the 60k training images, rounded).
DATASETS = {
    "fashion-mnist": {"prefix": "fmnist", "eps": 0.1, "mean": 0.2860, "std": 0.3530},
    "mnist": {"prefix": "mnist", "eps": 0.3, "mean": 0.1307, "std": 0.3081},
}
FGSM_STEP_FACTOR = 1.25  # Wong et al.: step 1.25 * eps from a uniform random start
LR_PEAK_FRACTION = 0.4  # the cyclic learning rate peaks 40 % of the way through training
VAL_ATTACK_SAMPLES = 500  # validation PGD-10 runs on this many of the held-out images
# A drop in validation PGD-10 accuracy beyond this is catastrophic overfitting, not the noise
# of 500 images (a standard error of about 2 points).
OVERFIT_DROP = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights; a resumed run must match it.

    Defaults: FGSM with random start at the dataset's standard eps (Fashion-MNIST 0.1, MNIST
    0.3), step 1.25 * eps; 5 epochs of batches of 128; SGD, momentum 0.9, weight decay 5e-4,
    cyclic learning rate peaking at 0.1; all training images but the last 1000 (validation).
    """

    arch: str
    width: int
    dataset: str = "fashion-mnist"
    eps: float | None = None
    attack: str = "fgsm-rs"
    step_size: float | None = None
    attack_steps: int = 7
    epochs: int = 5
    batch_size: int = 128
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_samples: int | None = None
    val_samples: int = 1000
    seed: int = 0

    @property
    def resolved_eps(self) -> float:
        return DATASETS[self.dataset]["eps"] if self.eps is None else self.eps

    @property
    def resolved_step(self) -> float:
        """The attack's step: 1.25 * eps for FGSM-RS, 2.5 * eps / steps for PGD."""
        if self.step_size is not None:
            return self.step_size
        if self.attack == "fgsm-rs":
            return FGSM_STEP_FACTOR * self.resolved_eps
        return 2.5 * self.resolved_eps / self.attack_steps

    def default_name(self) -> str:
        return f"{DATASETS[self.dataset]['prefix']}_{self.arch}_w{self.width}"

    def describe_attack(self) -> str:
        eps, step = self.resolved_eps, self.resolved_step
        if self.attack == "fgsm-rs":
            return f"FGSM with uniform random start (L-inf, eps={eps:g}, step={step:g})"
        return f"PGD-{self.attack_steps} (L-inf, eps={eps:g}, step={step:g}, random start)"


@dataclass
class TrainData:
    """Training and validation tensors, images in [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def load_data(config: TrainConfig, data_root: str | None = None) -> TrainData:
    """The dataset's training split: the last `val_samples` images validate, the first
    `train_samples` of the rest (all by default) train."""
    x, y, _, _ = load_train_and_test(config.dataset, root=data_root)
    return split_data(x, y, config)


def split_data(x: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> TrainData:
    if config.val_samples >= len(x):
        raise InvalidInputError(
            f"train_robust: val_samples={config.val_samples} leaves no training images of {len(x)}"
        )
    x_train, y_train = x[: -config.val_samples], y[: -config.val_samples]
    if config.train_samples is not None:
        x_train, y_train = x_train[: config.train_samples], y_train[: config.train_samples]
    if len(x_train) < config.batch_size:
        raise InvalidInputError(
            f"train_robust: {len(x_train)} training images are fewer than one batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    return TrainData(x_train, y_train, x[-config.val_samples :], y[-config.val_samples :])


def build_model(config: TrainConfig) -> nn.Module:
    """The architecture, initialised from the seed, normalizing with the dataset's mean/std."""
    torch.manual_seed(config.seed)
    info = DATASETS[config.dataset]
    return create_model(
        config.arch,
        num_classes=10,
        in_channels=1,
        input_size=28,
        width=config.width,
        mean=[info["mean"]],
        std=[info["std"]],
    )


def learning_rate(step: int, total_steps: int, max_lr: float) -> float:
    """Triangular cyclic schedule: 0 -> max_lr (at 40 % of the steps) -> 0."""
    return float(np.interp(step, [0, LR_PEAK_FRACTION * total_steps, total_steps], [0, max_lr, 0]))


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The adversarial training images for one batch (model left in train mode)."""
    eps, step = config.resolved_eps, config.resolved_step
    if config.attack == "pgd":
        # The attack package's PGD evaluates the model as given: eval-mode batch norm, then
        # back to training for the update.
        model.eval()
        x_adv = pgd(
            model, x, y, eps=eps, step_size=step, steps=config.attack_steps, generator=generator
        )
        model.train()
        return x_adv
    noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
    delta = ((x + (2 * noise - 1) * eps).clamp(0, 1) - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def validate(model: nn.Module, data: TrainData, config: TrainConfig, device: str) -> tuple:
    """(clean accuracy, PGD-10 accuracy) on the validation images, model in eval mode."""
    model.eval()
    attack = AttackConfig("pgd", eps=config.resolved_eps, steps=10, seed=config.seed)
    clean = count_correct(model, data.x_val, data.y_val, None, device=device)
    n_attack = min(VAL_ATTACK_SAMPLES, len(data.x_val))
    robust = count_correct(
        model, data.x_val[:n_attack], data.y_val[:n_attack], attack, device=device
    )
    model.train()
    return clean / len(data.x_val), robust / n_attack


def train(
    config: TrainConfig,
    data: TrainData,
    state_path: Path,
    *,
    device: str = "cpu",
    stop_after_epochs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, resuming from `state_path` when it holds a run of the same config.

    Args:
        config: the run; a saved state of another config is an error.
        data: training and validation images.
        state_path: the resumable state, rewritten after every epoch.
        device: "cpu" or "cuda".
        stop_after_epochs: return after this many epochs have run in this call (to split a run
            into pieces; the next call resumes).
        progress: show a progress bar per epoch.

    Returns:
        The state: "epoch" (epochs done), "model", "optimizer", "best" ({"epoch",
        "val_robust", "model"}), "history" (one dict per epoch), "cpu_seconds",
        "wall_seconds", "config".
    """
    model = build_model(config).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=0.0,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    state = _read_state(state_path, config)
    if state is None:
        state = {"epoch": 0, "best": None, "history": [], "cpu_seconds": 0.0, "wall_seconds": 0.0}
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resuming {state_path} after epoch {state['epoch']}", file=sys.stderr)
    steps_per_epoch = len(data.x_train) // config.batch_size  # the last partial batch is dropped
    total_steps = steps_per_epoch * config.epochs
    epochs_run = 0
    while state["epoch"] < config.epochs:
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        epoch = state["epoch"]
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data.x_train), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            **({} if sys.stderr.isatty() else {"mininterval": 30.0}),
        )
        for batch in bar:
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            x = data.x_train[index].to(device).contiguous(memory_format=torch.channels_last)
            y = data.y_train[index].to(device)
            lr = learning_rate(epoch * steps_per_epoch + batch, total_steps, config.max_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(perturb(model, x, y, config, generator))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}", adv_acc=f"{correct / seen:.3f}", refresh=False
            )
        bar.close()
        val_clean, val_robust = validate(model, data, config, device)
        cpu_seconds = time.process_time() - cpu_start
        wall_seconds = time.perf_counter() - wall_start
        record = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum / seen, 4),
            "train_adv_accuracy": round(correct / seen, 4),
            "val_clean": round(val_clean, 4),
            "val_robust": round(val_robust, 4),
            "cpu_seconds": round(cpu_seconds, 1),
            "wall_seconds": round(wall_seconds, 1),
        }
        print(f"{config.default_name()} {record}", file=sys.stderr, flush=True)
        weights = _cpu_state_dict(model)
        best = state["best"]
        if best is None or val_robust >= best["val_robust"]:  # ties: the later epoch
            best = {"epoch": epoch + 1, "val_robust": val_robust, "model": weights}
        state = {
            "config": dataclasses.asdict(config),
            "epoch": epoch + 1,
            "model": weights,
            "optimizer": optimizer.state_dict(),
            "best": best,
            "history": [*state["history"], record],
            "cpu_seconds": state["cpu_seconds"] + cpu_seconds,
            "wall_seconds": state["wall_seconds"] + wall_seconds,
        }
        _write_state(state_path, state)
        epochs_run += 1
    return state


def select_epoch(state: dict[str, Any]) -> tuple[int, dict[str, torch.Tensor]]:
    """(epoch, weights) to keep: the last epoch's, or the best one's if the last epoch's
    validation PGD-10 accuracy is more than `OVERFIT_DROP` below the best."""
    best, last = state["best"], state["history"][-1]
    if best["val_robust"] - last["val_robust"] > OVERFIT_DROP:
        return best["epoch"], best["model"]
    return state["epoch"], state["model"]


def _read_state(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, wanted = state.get("config") or {}, dataclasses.asdict(config)
    if saved != wanted:
        differ = sorted(k for k in wanted.keys() | saved.keys() if saved.get(k) != wanted.get(k))
        raise InvalidInputError(
            f"train_robust: {path} holds a run with other settings ({', '.join(differ)}); "
            "pass the same arguments to resume it, --fresh to start over, or another --name"
        )
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # contiguous(): channels-last weights would otherwise be saved in that layout.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
