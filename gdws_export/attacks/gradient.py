"""White-box gradient attacks: PGD (Madry et al. 2018) and FGSM (Goodfellow et al. 2015).

Inputs are images in [0, 1]; normalization belongs inside the model. The model is evaluated as
given: put it in eval mode first (a RuntimeWarning says so when any submodule is training).
Gradients are taken with `torch.autograd.grad` with respect to the input only, so no `.grad`
is left on the model's parameters, and the attacks work inside `torch.no_grad()` blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gdws_export.attacks._common import (
    check_eps,
    check_images,
    check_labels,
    check_logits,
    check_norm,
    check_positive_int,
    normal,
    per_sample_norm,
    uniform,
    warn_if_training,
)
from gdws_export.errors import InvalidInputError

Model = Callable[[torch.Tensor], torch.Tensor]

# Madry et al.'s rule: a step of 2.5 * eps / steps lets one run cross the eps-ball and back.
DEFAULT_STEP_FACTOR = 2.5

_TINY = 1e-12  # keeps divisions by a zero gradient or a zero perturbation finite


def default_step_size(eps: float, steps: int) -> float:
    """The step size PGD uses when none is given: 2.5 * eps / steps."""
    return DEFAULT_STEP_FACTOR * eps / steps


def pgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent maximizing the cross-entropy within an L-inf or L2 ball.

    Each restart starts from a random point of the ball (or from x when `random_start` is
    False, in which case one restart is run, since more would repeat it), takes `steps` steps
    and keeps its last iterate. Per sample, the result is the restart that fools the model, or
    failing that the one with the highest loss; samples already fooled are not attacked again.

    Args:
        model: maps a batch in [0, 1] to logits (N, classes); evaluated as given, so call
            `model.eval()` first.
        x: images in [0, 1], shape (N, ...).
        y: integer labels, shape (N,).
        eps: radius of the ball; 0 returns a copy of x.
        step_size: step length; None means `default_step_size(eps, steps)` = 2.5 * eps / steps.
        steps: gradient steps per restart.
        norm: "linf" (signed-gradient steps) or "l2" (normalized-gradient steps).
        random_start: start each restart from a uniform random point of the ball.
        restarts: number of random restarts.
        generator: source of the random starts; None uses torch's global generator.

    Returns:
        Adversarial images, same shape, dtype and device as x, in [0, 1] and within eps of x.

    Example:
        >>> x_adv = pgd(model.eval(), x, y, eps=8 / 255, steps=10)
    """
    return _attack(
        model, x, y, eps, step_size, steps, norm, random_start, restarts, generator, "pgd"
    )


def fgsm(
    model: Model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf"
) -> torch.Tensor:
    """The fast gradient (sign) method: one step of length eps from x, no random start.

    With norm "l2" it is the fast gradient method (FGM): a step along the L2-normalized
    gradient. Same arguments and guarantees as `pgd`.
    """
    return _attack(model, x, y, eps, eps, 1, norm, False, 1, None, "fgsm")


def _attack(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float | None,
    steps: int,
    norm: str,
    random_start: bool,
    restarts: int,
    generator: torch.Generator | None,
    where: str,
) -> torch.Tensor:
    eps = check_eps(eps, where)
    steps = check_positive_int(steps, "steps", where)
    restarts = check_positive_int(restarts, "restarts", where)
    norm = check_norm(norm, where)
    if step_size is None:
        step_size = default_step_size(eps, steps)
    else:
        step_size = check_eps(step_size, where, name="step_size")
        if step_size == 0 and eps > 0:
            raise InvalidInputError(f"{where}: step_size must be > 0, got 0")
    x = check_images(x, where)
    y = check_labels(y, x.shape[0], where).to(x.device)
    warn_if_training(model, where, stacklevel=4)

    # inference_mode(False) + enable_grad: the attack needs autograd even when called from
    # evaluation code that disabled it.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone()
        y = y.clone()
        with torch.no_grad():
            check_logits(model(x), y, where)
        if eps == 0:
            return x

        best = x.clone()
        best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(restarts if random_start else 1):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            x_todo, y_todo = x[todo], y[todo]
            candidate = _pgd_run(
                model, x_todo, y_todo, eps, step_size, steps, norm, random_start, generator
            )
            with torch.no_grad():
                logits = model(candidate)
                loss = F.cross_entropy(logits.float(), y_todo, reduction="none")
                now_fooled = logits.argmax(dim=1) != y_todo
            # Samples in `todo` are not fooled yet, so fooling one always wins.
            better = now_fooled | (loss > best_loss[todo])
            chosen = todo[better]
            best[chosen] = candidate[better]
            best_loss[chosen] = loss[better]
            fooled[chosen] = now_fooled[better]
        return best


def _pgd_run(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: str,
    random_start: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One PGD run from a random (or the clean) start; returns the last iterate."""
    x_adv = x + _random_start(x, eps, norm, generator) if random_start else x.clone()
    x_adv = x_adv.clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        # Summed, not averaged, so each sample's gradient does not shrink with the batch size.
        loss = F.cross_entropy(model(x_adv).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv, allow_unused=True)
        if grad is None:  # the output does not depend on the input: nothing to follow
            grad = torch.zeros_like(x_adv)
        with torch.no_grad():
            x_adv = _project(x_adv.detach() + step_size * _direction(grad, norm), x, eps, norm)
    return x_adv.detach()


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm for the given norm."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample_norm(grad).clamp_min(_TINY)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the eps-ball around x, then onto the [0, 1] box.

    Clipping to the box after the ball keeps the ball constraint, since x lies in the box:
    clipping moves each coordinate towards x.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / per_sample_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform random point of the eps-ball (before clipping to the box)."""
    if norm == "linf":
        return (2 * uniform(x.shape, generator, x) - 1) * eps
    direction = normal(x.shape, generator, x)
    direction = direction / per_sample_norm(direction).clamp_min(_TINY)
    # Radius eps * U^(1/d) makes the point uniform in the d-dimensional ball.
    dims = x[0].numel()
    radius = eps * uniform((x.shape[0],), generator, x) ** (1.0 / dims)
    return direction * radius.view(-1, *([1] * (x.dim() - 1)))
