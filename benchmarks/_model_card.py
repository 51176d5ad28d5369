"""Model cards of the checkpoints in `models/`: `<name>.json` (the data) and `<name>.md` (for
people), and the `models/README.md` index of every card.

A card says what a checkpoint is (architecture, size, MACs, file hash), what it was trained on
and how (data, attack, eps, epochs, the exact training command) and what it measures: clean
and robust accuracy, each with the attack's `AttackConfig.describe()` string, its settings and
the number of test images. The training script writes the first two parts, and
`evaluate_checkpoint.py` the measurements.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from gdws_export._files import atomic_write_text
from gdws_export.errors import InvalidInputError

CARD_FORMAT = "gdws-export/model-card"
CARD_VERSION = 1
DEFAULT_ALIAS = "default.json"

# The measurements a complete card holds, in the order they are shown.
MEASUREMENT_LABELS = {
    "clean": "clean",
    "pgd20": "PGD-20",
    "pgd100": "PGD-100",
    "slice_clean": "slice: clean",
    "slice_pgd10": "slice: PGD-10",
}


@dataclass
class Measurement:
    """One accuracy measurement on the first `samples` images of a test set.

    Attributes:
        attack: `AttackConfig.describe()`, or "clean (no attack)".
        config: `AttackConfig.to_dict()` of the attack (None for clean accuracy).
        data: which images: a named split ("fashion-mnist test") or a file path.
        samples: how many images, always the first ones of `data`.
        correct: how many the model classifies correctly (after the attack).
        batch_size: images per attack call; the attack's seed is applied per batch.
        seconds: wall-clock time of the measurement.
    """

    attack: str
    config: dict[str, Any] | None
    data: str
    samples: int
    correct: int
    batch_size: int
    seconds: float

    @property
    def accuracy(self) -> float:
        """Fraction correct, in [0, 1]."""
        return self.correct / self.samples

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "accuracy": round(self.accuracy, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModelCard:
    """The facts about one checkpoint `models/<name>.pt`; saved as `<name>.json`.

    Attributes:
        name: the checkpoint's bare name (`load_model(name)` finds it).
        arch: the registry name; `arch_kwargs` re-create it with `create_model`.
        checkpoint: the `.pt` file name, next to the card.
        file_bytes, sha256: size and hash of that file.
        params: trainable parameters; macs: multiply-accumulates of one image's forward pass
            (convolutions and linear layers).
        data: the training and evaluation data.
        training: method, attack, eps, schedule, seed, time, command, per-epoch history.
        evaluation: measurements keyed as in `MEASUREMENT_LABELS`.
        notes: free text, e.g. why this width.
    """

    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    checkpoint: str
    file_bytes: int
    sha256: str
    params: int
    macs: int
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Measurement] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["evaluation"] = {key: m.to_dict() for key, m in self.evaluation.items()}
        return {"format": CARD_FORMAT, "version": CARD_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise InvalidInputError(f"{where}: not a model card (format is not {CARD_FORMAT!r})")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["evaluation"] = {
            key: Measurement.from_dict(value) for key, value in data.get("evaluation", {}).items()
        }
        return cls(**fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"model card {path}: cannot read it as JSON ({exc})") from None
        return cls.from_dict(data, where=f"model card {path}")

    def save(self, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write `<name>.json` and `<name>.md` into `folder`, atomically; returns both paths."""
        folder = Path(folder)
        json_path = write_text_atomic(
            folder / f"{self.name}.json", json.dumps(self.to_dict(), indent=2) + "\n"
        )
        return json_path, write_text_atomic(folder / f"{self.name}.md", self.markdown())

    def accuracy(self, key: str) -> float | None:
        measurement = self.evaluation.get(key)
        return None if measurement is None else measurement.accuracy

    def markdown(self) -> str:
        """The card for people: what the model is, how it was trained, what it measures."""
        kwargs = self.arch_kwargs
        t = self.training
        lines = [
            f"# {self.name}",
            "",
            f"`{self.arch}` (width {kwargs.get('width')}, {kwargs.get('in_channels')} x "
            f"{kwargs.get('input_size')} x {kwargs.get('input_size')} input, "
            f"{kwargs.get('num_classes')} classes), adversarially trained on "
            f"{self.data.get('dataset', '?')}. {_millions(self.params)} parameters, "
            f"{_millions(self.macs)} MACs per image, file `{self.checkpoint}` "
            f"({self.file_bytes / 1e6:.1f} MB, sha256 `{self.sha256[:16]}...`).",
            "",
            "```python",
            "from gdws_export.models import load_model",
            "",
            f'model = load_model("{self.name}")  # takes [0, 1] images, normalizes inside',
            "```",
            "",
            "## Accuracy",
            "",
            "| measurement | attack | images | accuracy |",
            "|---|---|---|---|",
        ]
        for key, label in MEASUREMENT_LABELS.items():
            m = self.evaluation.get(key)
            if m is not None:
                lines.append(
                    f"| {label} | {m.attack} | first {m.samples} of {m.data} | "
                    f"{100 * m.accuracy:.2f} % |"
                )
        if not self.evaluation:
            lines.append("| (not measured yet: run benchmarks/evaluate_checkpoint.py) | | | |")
        lines += [
            "",
            "Measured by `benchmarks/evaluate_checkpoint.py` with `gdws_export.attacks` "
            "(`run_attack`, the attack's seed applied to each batch), model in eval mode. "
            "Robust accuracy counts an image as correct only if the attacked image is still "
            "classified correctly. The slice rows are what `tests/test_checkpoints.py` checks.",
            "",
            "## Data",
            "",
        ]
        lines += [f"- {key}: {value}" for key, value in self.data.items()]
        lines += ["", "## Training", ""]
        for key in TRAINING_KEYS_SHOWN:
            if key in t:
                lines.append(f"- {key}: {t[key]}")
        if "command" in t:
            lines += ["", "Command (from the repository root):", "", "```sh", t["command"], "```"]
        history = t.get("history", [])
        if history:
            lines += [
                "",
                "| epoch | train loss | train acc (adv.) | val clean | val PGD-10 | CPU s |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {h['epoch']} | {h['train_loss']:.3f} | {100 * h['train_adv_accuracy']:.1f} % | "
                f"{100 * h['val_clean']:.1f} % | {100 * h['val_robust']:.1f} % | "
                f"{h['cpu_seconds']:.0f} |"
                for h in history
            ]
        if self.notes:
            lines += ["", "## Notes", "", self.notes]
        return "\n".join(lines) + "\n"


TRAINING_KEYS_SHOWN = (
    "method",
    "attack",
    "eps",
    "step_size",
    "epochs",
    "selected_epoch",
    "batch_size",
    "optimizer",
    "lr_schedule",
    "train_samples",
    "validation",
    "seed",
    "device",
    "threads",
    "cpu_seconds",
    "wall_seconds",
)


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def write_text_atomic(path: Path, text: str) -> Path:
    """`gdws_export._files.atomic_write_text`, making the folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def write_index(folder: str | os.PathLike[str]) -> Path:
    """Regenerate `folder/README.md`: a table of every card in the folder and the default."""
    folder = Path(folder)
    cards = []
    for path in sorted(folder.glob("*.json")):
        if path.name == DEFAULT_ALIAS:
            continue
        cards.append(ModelCard.load(path))
    default = read_default(folder)
    lines = [
        "# Checkpoints",
        "",
        "Adversarially trained by `benchmarks/train_robust.py` and measured by "
        "`benchmarks/evaluate_checkpoint.py` (this table is regenerated by it). Each "
        "`<name>.pt` is in the project's checkpoint format (`load_model(name)` re-creates the "
        "model); `<name>.json` is its model card and `<name>.md` the same for people. Models "
        "take [0, 1] images and normalize inside. Robust accuracy: PGD, L-inf, step eps / 10, one "
        "random start; PGD-20 on the full test set, PGD-100 on its first 1000 images.",
        "",
    ]
    if default is not None:
        lines += [
            f"Default model (`{DEFAULT_ALIAS}`): **{default}**.",
            "",
        ]
    lines += [
        "| name | arch | width | params | MACs | size | eps | clean | PGD-20 | PGD-100 (1k) "
        "| epochs | train CPU time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for card in cards:
        lines.append(
            f"| [{card.name}]({card.name}.md) | {card.arch} | {card.arch_kwargs.get('width')} | "
            f"{_millions(card.params)} | {_millions(card.macs)} | "
            f"{card.file_bytes / 1e6:.1f} MB | {card.training.get('eps', '?')} | "
            f"{_percent(card.accuracy('clean'))} | {_percent(card.accuracy('pgd20'))} | "
            f"{_percent(card.accuracy('pgd100'))} | {card.training.get('epochs', '?')} | "
            f"{_minutes(card.training.get('cpu_seconds'))} |"
        )
    commands = [(c.name, c.training.get("command")) for c in cards if c.training.get("command")]
    if commands:
        lines += ["", "## Training commands", ""]
        for name, command in commands:
            lines += [f"{name}:", "", "```sh", command, "```", ""]
    return write_text_atomic(folder / "README.md", "\n".join(lines).rstrip() + "\n")


def read_default(folder: str | os.PathLike[str]) -> str | None:
    """The name `folder/default.json` points to, or None when there is none."""
    path = Path(folder) / DEFAULT_ALIAS
    if not path.is_file():
        return None
    return json.loads(path.read_text())["name"]


def write_default(folder: str | os.PathLike[str], name: str, reason: str) -> Path:
    """Point `folder/default.json` at the checkpoint `name` (a plain file, not a symlink)."""
    folder = Path(folder)
    if not (folder / f"{name}.pt").is_file():
        raise InvalidInputError(f"write_default: {folder / name}.pt does not exist")
    alias = {"name": name, "checkpoint": f"{name}.pt", "card": f"{name}.json", "reason": reason}
    return write_text_atomic(folder / DEFAULT_ALIAS, json.dumps(alias, indent=2) + "\n")


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f} min"
