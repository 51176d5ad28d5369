"""The Square Attack (Andriushchenko et al., ECCV 2020), L-inf, query-only.

It needs only the logits, so it attacks an exported engine (ONNX Runtime, TensorRT) directly,
where gradient attacks cannot run. Each iteration redraws a random square window of the
perturbation as +-eps per channel, and keeps the change if it lowers the margin
logit[y] - max_{j != y} logit[j]; a sample stops being queried once it is misclassified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gdws_export.attacks._common import (
    check_eps,
    check_images,
    check_labels,
    check_logits,
    check_positive_int,
    uniform,
    warn_if_training,
)
from gdws_export.errors import InvalidInputError

# The paper halves the square's area fraction p at these iterations of a 10,000-query budget;
# other budgets use the same schedule, rescaled (or not: AutoAttack's Square does not).
_SCHEDULE_BUDGET = 10_000
_HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

# Redraws of a square's signs when the draw would leave the image unchanged (e.g. pixels
# already clipped at 0 or 1); a few are enough, a bounded number keeps the loop finite.
_REDRAWS = 10


def square_attack(
    predict_fn: Callable[[Any], Any],
    x: Any,
    y: Any,
    *,
    eps: float,
    queries: int = 1000,
    p_init: float = 0.05,
    generator: torch.Generator | None = None,
    rescale_schedule: bool = True,
) -> tuple[Any, Any]:
    """Run the L-inf Square Attack on a model seen only through its logits.

    Args:
        predict_fn: maps a batch of images in [0, 1], shape (n, C, H, W), to logits (n, classes)
            as a numpy array or torch tensor. It gets numpy float32 arrays when x is a numpy
            array and torch tensors when x is a tensor, with n <= N varying between calls
            (only samples not yet fooled are queried). Wrap an engine that needs a fixed batch
            size so that it pads.
        x: images in [0, 1], shape (N, C, H, W), numpy array or torch tensor.
        y: integer labels, shape (N,).
        eps: L-inf radius; 0 returns x unchanged.
        queries: the most predict_fn evaluations per sample, counting the clean one.
        p_init: the square's initial area as a fraction of the image; it shrinks on the
            paper's schedule, rescaled to `queries`.
        generator: source of randomness; None uses torch's global generator.
        rescale_schedule: stretch the paper's p schedule (set for 10,000 queries) to
            `queries`; False keeps it as it is, as AutoAttack's Square does (p_init 0.8,
            5000 queries).

    Returns:
        (x_adv, queries_used): adversarial images of x's type (numpy inputs come back as
        float32, tensors keep their dtype), within eps of x in L-inf and in [0, 1], and the
        int64 number of predict_fn evaluations of each sample (1 for a sample misclassified
        from the start).

    Example:
        >>> session = onnxruntime.InferenceSession("model.onnx")
        >>> predict = lambda batch: session.run(None, {"input": batch})[0]
        >>> x_adv, used = square_attack(predict, x_numpy, y_numpy, eps=8 / 255, queries=1000)
    """
    where = "square_attack"
    eps = check_eps(eps, where)
    queries = check_positive_int(queries, "queries", where)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
        raise InvalidInputError(f"{where}: p_init must be in (0, 1], got {p_init!r}")
    numpy_io = not isinstance(x, torch.Tensor)
    x_torch = _as_float_tensor(x, where)
    if x_torch.dim() != 4:
        raise InvalidInputError(
            f"{where}: x must have shape (N, C, H, W), got {tuple(x_torch.shape)}"
        )
    x_torch = check_images(x_torch, where)
    y_torch = check_labels(torch.as_tensor(y), x_torch.shape[0], where).to(x_torch.device)
    warn_if_training(predict_fn, where)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        logits = predict_fn(batch.cpu().numpy() if numpy_io else batch)
        return torch.as_tensor(logits).to(device=x_torch.device, dtype=torch.float32)

    with torch.no_grad():
        schedule = queries if rescale_schedule else _SCHEDULE_BUDGET
        x_adv, used = _square_linf(
            predict, x_torch, y_torch, eps, (queries, schedule), p_init, generator
        )
    if numpy_io:
        return x_adv.cpu().numpy(), used.cpu().numpy()
    return x_adv, used


def _square_linf(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    budgets: tuple[int, int],
    p_init: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    budget, schedule = budgets  # queries per sample; the budget the p schedule is stretched to
    n, channels, height, width = x.shape
    logits = predict(x)
    check_logits(logits, y, "square_attack")
    margin = _margin(logits, y)
    fooled = logits.argmax(dim=1) != y
    used = torch.ones(n, dtype=torch.int64, device=x.device)
    x_best = x.clone()
    if eps == 0 or budget == 1:
        return x_best, used

    # Start from vertical stripes of +-eps (one sign per channel and column): the paper's
    # initialization, already a strong perturbation for most models.
    todo = (~fooled).nonzero().squeeze(1)
    if todo.numel() > 0:
        stripes = eps * _random_signs((todo.numel(), channels, 1, width), generator, x)
        candidate = (x[todo] + stripes).clamp(0.0, 1.0)
        _accept(predict, candidate, todo, x_best, y, margin, fooled, used)

    for iteration in range(1, budget - 1):
        todo = ((~fooled) & (used < budget)).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        side = _square_side(p_init, iteration, schedule, height, width)
        window = _random_windows(todo.numel(), side, height, width, generator, x)
        current, original = x_best[todo], x[todo]
        signs = eps * _random_signs((todo.numel(), channels, 1, 1), generator, x)
        for _ in range(_REDRAWS):
            candidate = torch.where(window, (original + signs).clamp(0.0, 1.0), current)
            unchanged = (candidate - current).abs().flatten(1).amax(dim=1) < 1e-7
            if not bool(unchanged.any()):
                break
            fresh = eps * _random_signs(signs.shape, generator, x)
            signs = torch.where(unchanged.view(-1, 1, 1, 1), fresh, signs)
        _accept(predict, candidate, todo, x_best, y, margin, fooled, used)
    return x_best, used


def _accept(
    predict: Callable[[torch.Tensor], torch.Tensor],
    candidate: torch.Tensor,
    todo: torch.Tensor,
    x_best: torch.Tensor,
    y: torch.Tensor,
    margin: torch.Tensor,
    fooled: torch.Tensor,
    used: torch.Tensor,
) -> None:
    """Query the candidates and keep, in place, those that lower their sample's margin."""
    logits = predict(candidate)
    check_logits(logits, y[todo], "square_attack")
    used[todo] += 1
    new_margin = _margin(logits, y[todo])
    better = new_margin < margin[todo]
    chosen = todo[better]
    x_best[chosen] = candidate[better]
    margin[chosen] = new_margin[better]
    fooled[chosen] = logits[better].argmax(dim=1) != y[chosen]


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit[y] - max_{j != y} logit[j]: negative once the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -float("inf"))
    return true - others.amax(dim=1)


def _square_side(p_init: float, iteration: int, budget: int, height: int, width: int) -> int:
    """Side of the square at this iteration: sqrt(p * H * W), with p halved on schedule."""
    scaled = iteration * _SCHEDULE_BUDGET // budget  # integers: exact at the halving points
    p = p_init / 2 ** sum(scaled > point for point in _HALVING_POINTS)
    side = round(math.sqrt(p * height * width))
    # At least one pixel, and smaller than the image so that its position varies.
    return max(min(side, min(height, width) - 1), 1)


def _random_windows(
    n: int,
    side: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """A (n, 1, H, W) boolean mask holding one side x side square per sample."""
    top = (uniform((n,), generator, like) * (height - side + 1)).long()
    left = (uniform((n,), generator, like) * (width - side + 1)).long()
    rows = torch.arange(height, device=like.device)
    cols = torch.arange(width, device=like.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _random_signs(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Uniform random +-1 of like's dtype."""
    return torch.where(uniform(shape, generator, like) < 0.5, -1.0, 1.0).to(like.dtype)


def _as_float_tensor(x: Any, where: str) -> torch.Tensor:
    """x as a torch tensor; numpy inputs become float32, as engines expect."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        tensor = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(
            f"{where}: x must be a numpy array or torch tensor of images ({exc})"
        ) from None
    return tensor.float() if tensor.is_floating_point() else tensor
