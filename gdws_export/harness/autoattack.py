"""AutoAttack (Croce & Hein, 2020) as an evaluation option, through its own package.

AutoAttack is RobustBench's reference: APGD-CE, APGD-T, FAB-T and Square in its "standard"
version. It is an optional dependency, imported when `autoattack_accuracy` runs: either the
authors' package from git (`import autoattack`) or its PyPI release `pyautoattack`, whose
constructor and `run_standard_evaluation` differ slightly (both are handled here). It attacks
a PyTorch model; for an INT8 engine, pass its fake-quantized twin
(`runtimes.fake_quant.twin_of_engine`) and replay the images on the engine if needed.
"""

from __future__ import annotations

import time
from types import ModuleType

import torch
from torch import nn

from gdws_export._optional import require
from gdws_export.attacks._common import check_eps, check_images, check_labels, check_norm
from gdws_export.attacks.config import format_radius
from gdws_export.errors import InvalidInputError, MissingDependencyError
from gdws_export.harness.accuracy_report import AttackResult

AUTOATTACK_VERSIONS = ("standard", "plus", "rand")
_NORMS = {"linf": "Linf", "l2": "L2"}
DEFAULT_AUTOATTACK_BATCH = 250  # AutoAttack's own default


def import_autoattack() -> ModuleType:
    """The AutoAttack package: `autoattack` (the authors' git repository) or `pyautoattack`.

    Raises:
        MissingDependencyError: neither is installed; one line naming the package to install.
    """
    try:
        return require("autoattack")
    except MissingDependencyError:
        return require("pyautoattack")


def autoattack_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    n_images: int | None = None,
    *,
    batch_size: int = DEFAULT_AUTOATTACK_BATCH,
    seed: int = 0,
) -> AttackResult:
    """Robust accuracy of a PyTorch model under AutoAttack.

    Args:
        model: maps [0, 1] images to logits; put it in eval mode first (for INT8 engines, the
            fake-quantized twin). Attacked on the device of its parameters (CPU without any).
        x: images, float (N, C, H, W) in [0, 1].
        y: int64 labels (N,).
        eps: the radius.
        norm: "linf" or "l2".
        version: "standard" (RobustBench's), "plus" or "rand".
        n_images: attack the first n images only; defaults to all of x.
        batch_size: AutoAttack's batch size.
        seed: AutoAttack's seed (it uses the time when none is given; here it is fixed).

    Returns:
        An AttackResult (attack "autoattack", target "pytorch"): robust accuracy counts images
        right clean and under every attack of the version.

    Raises:
        MissingDependencyError: the package is not installed (one line; see `import_autoattack`).

    Example:
        >>> autoattack_accuracy(model.eval(), x, y, eps=8 / 255, n_images=100)  # doctest: +SKIP
    """
    where = "autoattack_accuracy"
    eps = check_eps(eps, where)
    check_norm(norm, where)
    if version not in AUTOATTACK_VERSIONS:
        raise InvalidInputError(f"{where}: version must be one of {AUTOATTACK_VERSIONS}")
    if n_images is not None:
        if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
            raise InvalidInputError(f"{where}: n_images must be an integer >= 1 or None")
        x, y = x[:n_images], y[:n_images]
    x = check_images(x, where)
    y = check_labels(y, x.shape[0], where)
    package = import_autoattack()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    start = time.perf_counter()
    x_adv = _run(package, model, x.to(device), y.to(device), eps, (norm, version, seed, batch_size))
    with torch.no_grad():
        robust = torch.cat(
            [
                model(x_adv[i : i + batch_size]).argmax(1) == y[i : i + batch_size].to(device)
                for i in range(0, len(x_adv), batch_size)
            ]
        )
    delta = (x_adv.cpu() - x.cpu()).flatten(1)
    sizes = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    name = _NORMS[norm].replace("inf", "-inf")
    return AttackResult(
        attack="autoattack",
        description=f"AutoAttack {version} ({name}, eps={format_radius(eps, norm)}, seed {seed})",
        norm=norm,
        eps=eps,
        steps=0,
        samples=len(y),
        target="pytorch",
        robust_accuracy=float(robust.float().mean()),
        max_perturbation=float(sizes.max()),
        config={
            "version": version, "seed": seed, "batch_size": batch_size,
            "package": package.__name__, "package_version": getattr(package, "__version__", ""),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )  # fmt: skip


def _run(package: ModuleType, model, x, y, eps: float, settings: tuple) -> torch.Tensor:
    """AutoAttack's adversarial images (clean images stay where no attack succeeded)."""
    norm, version, seed, batch_size = settings
    common = dict(norm=_NORMS[norm], eps=eps, seed=seed, version=version, device=x.device)
    if package.__name__ == "pyautoattack":  # keyword-only constructor, no `verbose`
        adversary = package.AutoAttack(model, **common)
        adversary.verbose = False
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    else:
        adversary = package.AutoAttack(model, verbose=False, **common)
        x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
    return x_adv.detach()


__all__ = ["AUTOATTACK_VERSIONS", "autoattack_accuracy", "import_autoattack"]
