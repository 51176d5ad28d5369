"""Helpers shared by the benchmark scripts (the scripts import this, never each other)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from torch import nn

from gdws_export._files import atomic_write_text
from gdws_export.attacks import AttackConfig
from gdws_export.errors import GDWSExportError
from gdws_export.gdws.selection import find_convs
from gdws_export.models import load_model
from gdws_export.pipeline.operating_point import PairedDrop
from gdws_export.runtimes.base import Runner


@torch.no_grad()
def spectral_weights(model: nn.Module, decay: float, seed: int) -> nn.Module:
    """Give every KxK conv per-channel spectra like a trained conv's, in place; returns the
    model in eval mode.

    No trained CIFAR weights exist offline, and freshly initialised convs have flat
    per-channel spectra, on which the network-level MAC allocation degenerates (some layers
    keep a single kernel). Per input channel, this draws random singular vectors with singular
    values decaying by `decay` per rank and channel scales drawn log-normally, keeping each
    conv's weight scale; BatchNorm statistics are drawn near their initial values. Speed
    depends on the shapes and the kernel counts only, not on the values.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            m, c, kh, kw = module.weight.shape
            k = kh * kw
            rank = min(m, k)
            u = torch.linalg.qr(torch.randn(c, m, rank, generator=gen))[0]
            v = torch.linalg.qr(torch.randn(c, k, rank, generator=gen))[0]
            scale = torch.exp(0.5 * torch.randn(c, 1, generator=gen))
            s = scale * decay ** torch.arange(rank, dtype=torch.float32)
            blocks = u @ torch.diag_embed(s) @ v.transpose(1, 2)  # (C, M, K)
            weight = blocks.permute(1, 0, 2).reshape(m, c, kh, kw)
            module.weight.copy_(weight * module.weight.std() / weight.std())
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def forms_summary(forms: dict[str, str]) -> str:
    """'gather x10, original conv x2': how an export lowered its GDWS layers ("dense" = the
    original conv shipped); "plain convs" when the model has none."""
    if not forms:
        return "plain convs"
    counts: dict[str, int] = {}
    for form in forms.values():
        counts[form] = counts.get(form, 0) + 1
    return ", ".join(f"{'original conv' if f == 'dense' else f} x{n}"
                     for f, n in sorted(counts.items()))  # fmt: skip


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces a run of `benchmarks/<script>` with `argv` (None: this
    process's own arguments), as the results files record it."""
    args = sys.argv[1:] if argv is None else argv
    return "PYTHONPATH=. python " + shlex.join([f"benchmarks/{script}", *args])


def write_json_and_markdown(stem: str | Path, data: dict, markdown: str) -> tuple[Path, Path]:
    """`<stem>.json` (`data`) and `<stem>.md`, each written atomically; the suffixes are
    appended, so a stem like "run-0.25" keeps its ratio."""
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(data, indent=1) + "\n")
    atomic_write_text(md_path, markdown)
    return json_path, md_path


def check_kept_convs(parser: argparse.ArgumentParser, option: str, checkpoint: Path,
                     layers: tuple[str, ...] | list[str]) -> None:  # fmt: skip
    """A usage error (one line, exit 2) unless every name or pattern in `layers` names a conv
    of `checkpoint`, checked before any work (`find_convs`, as `approximate(exclude=)` will)."""
    try:
        find_convs(load_model(checkpoint), exclude=list(layers))
    except GDWSExportError as exc:
        parser.error(f"{option} {checkpoint.stem}: {exc}")


def pgd_attack(eps: float, steps: int, seed: int = 0) -> AttackConfig:
    """The confirmation attack: L-inf PGD at `eps`, `steps` steps of 2.5 * eps / steps (so the
    steps can cross the ball), one random start, seeded."""
    return AttackConfig("pgd", eps=eps, step_size=2.5 * eps / steps, steps=steps, seed=seed)


def attack_and_replay(
    model: nn.Module,
    engine: Runner,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """Per image of `x`: right clean and right under `attack` (white-box on `model`, its
    `attack_copy`, as the export judges candidates), and the same on `engine` with the
    adversarial images replayed. Models attacked with the same images, attack and seed give
    paired outcomes (`PairedDrop.from_outcomes`).

    Returns:
        {"clean", "robust", "engine_clean", "engine_robust"}: bool tensors, robust meaning
        right both clean and under attack.
    """
    from gdws_export.harness.accuracy import predict_batched
    from gdws_export.harness.measure_choice import judge_with_images

    clean, robust, x_adv = judge_with_images(model, x, y, attack, batch_size)
    with engine as active:
        engine_clean = predict_batched(active, x.numpy(), batch_size).argmax(1)
        engine_adv = predict_batched(active, x_adv.numpy(), batch_size).argmax(1)
    engine_clean = torch.from_numpy(engine_clean) == y
    engine_robust = engine_clean & (torch.from_numpy(engine_adv) == y)
    return {"clean": clean, "robust": robust, "engine_clean": engine_clean,
            "engine_robust": engine_robust}  # fmt: skip


def drop_figures(drop: PairedDrop) -> dict:
    """A paired drop as the results files record it: images, lost, gained, points, interval."""
    low, high = drop.interval()
    return {"images": drop.images, "lost": drop.lost, "gained": drop.gained,
            "points": round(drop.points, 3), "interval": [round(low, 3), round(high, 3)]}  # fmt: skip


def read_export(folder: str | Path) -> dict:
    """The report an export (`gdws-export -o FOLDER`, or one setting of a sweep) wrote."""
    return json.loads((Path(folder) / "report.json").read_text())["report"]


def shipped_twin(folder: str | Path, report: dict) -> nn.Module:
    """The PyTorch twin of what an export folder ships (`shipped.pt2`): the model exactly as
    its engine computes it."""
    from gdws_export.runtimes.torch_program import load_program

    return load_program(Path(folder) / report["files"]["shipped_program"]).module()


def shipped_engine(folder: str | Path, report: dict) -> Runner:
    """A runner (not yet active) of the engine an export folder ships, with its settings."""
    from gdws_export.runtimes.build import open_runner

    files = report["files"]
    return open_runner(report["settings"]["target"], Path(folder) / files["engine"],
                       Path(folder) / files["engine_settings"])  # fmt: skip
