"""Parity: does the exported graph compute what the PyTorch model computes?

Both run on the same real inputs. The tolerance is relative to the logit scale (the largest
|logit| the PyTorch model produces on those inputs), so it means the same for a model whose
logits are around 0.1 and one whose logits are around 100.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from gdws_export.errors import ParityError

DEFAULT_TOLERANCE = 1e-4  # FP32: round-off of a different but equal graph stays far below
# An input's top-1 class is decided when the reference's two largest logits are at least this
# fraction of the logit scale apart. Below it (random images: a robust model's logits are
# near-ties there) any small change flips the argmax, and disagreement says nothing.
DECIDED_MARGIN = 0.1


@dataclass(frozen=True)
class ParityReport:
    """How close an exported graph's logits are to the PyTorch model's.

    Attributes:
        n_inputs: number of inputs compared.
        max_abs_diff: largest |logit difference|.
        mean_abs_diff: mean |logit difference|.
        logit_scale: largest |logit| of the PyTorch model on these inputs.
        relative_diff: max_abs_diff / logit_scale, the figure held to `tolerance`.
        top1_agreement: fraction of inputs whose argmax agrees.
        tolerance: the bound on relative_diff.
        decided_inputs: inputs whose reference top-2 margin is at least `DECIDED_MARGIN` of
            the logit scale (not near a tie).
        decided_top1_agreement: fraction of those whose argmax agrees; None when none is.
    """

    n_inputs: int
    max_abs_diff: float
    mean_abs_diff: float
    logit_scale: float
    relative_diff: float
    top1_agreement: float
    tolerance: float = DEFAULT_TOLERANCE
    decided_inputs: int = 0
    decided_top1_agreement: float | None = None

    @property
    def passed(self) -> bool:
        """Whether relative_diff is within tolerance (and finite)."""
        return bool(np.isfinite(self.relative_diff)) and self.relative_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> ParityReport:
        return cls(**{k: v for k, v in data.items() if k != "passed"})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """One line for logs and error messages."""
        return (
            f"max |diff| {self.max_abs_diff:.3g} ({self.relative_diff:.2g} of the logit scale "
            f"{self.logit_scale:.3g}, tolerance {self.tolerance:g}), mean |diff| "
            f"{self.mean_abs_diff:.3g}, top-1 agreement {100 * self.top1_agreement:.1f} % "
            f"on {self.n_inputs} inputs"
        )


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
) -> ParityReport:
    """Compare two (N, classes) logit arrays; `reference` sets the logit scale."""
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        raise ParityError(f"logit shapes differ: PyTorch {reference.shape}, ONNX {candidate.shape}")
    diff = np.abs(reference - candidate)
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_diff = float(diff.max()) if diff.size else 0.0
    relative = max_diff / scale if scale > 0 else (0.0 if max_diff == 0 else float("inf"))
    agrees = reference.argmax(1) == candidate.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    decided = (
        (top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN * scale) & (scale > 0)
        if top2 is not None
        else np.ones(len(reference), dtype=bool)
    )
    return ParityReport(
        n_inputs=len(reference),
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        logit_scale=scale,
        relative_diff=float(relative) if np.isfinite(max_diff) else float("inf"),
        top1_agreement=float(np.mean(agrees)),
        tolerance=float(tolerance),
        decided_inputs=int(decided.sum()),
        decided_top1_agreement=float(np.mean(agrees[decided])) if decided.any() else None,
    )


def check_parity(
    torch_model,
    runner,
    inputs: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int = 32,
    first_alone: bool = False,
    where: str = "the exported graph",
) -> ParityReport:
    """Run `torch_model` and `runner` (a `Runner` of the exported graph) on `inputs`.

    Args:
        torch_model: the PyTorch model (run in eval mode, on CPU, in float32).
        runner: an activated `gdws_export.runtimes.Runner`.
        inputs: (N, C, H, W) float32 images.
        tolerance: bound on max |diff| / logit scale.
        batch: inputs per run; a graph with a fixed batch runs its own batch size (the last
            run padded by repeating inputs).
        first_alone: run the first input as a batch of one (checks a dynamic batch axis).
        where: names the graph in the error message.

    Raises:
        ParityError: the graph is off by more than `tolerance` of the logit scale.
    """
    import torch

    was_training = torch_model.training
    torch_model.eval()
    fixed = runner.inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None
    batch = fixed or batch
    bounds = [0, 1] if first_alone and not fixed else [0]
    bounds += list(range(bounds[-1] + batch, len(inputs), batch)) + [len(inputs)]
    bounds = sorted(set(bounds))
    reference, candidate = [], []
    try:
        with torch.no_grad():
            for start, stop in zip(bounds[:-1], bounds[1:], strict=False):
                chunk = np.ascontiguousarray(inputs[start:stop], dtype=np.float32)
                reference.append(torch_model(torch.from_numpy(chunk)).float().numpy())
                if fixed and len(chunk) < fixed:  # pad to the graph's batch, keep our rows
                    padded = np.concatenate([chunk] * -(-fixed // len(chunk)))[:fixed]
                    candidate.append(runner.predict(padded)[: len(chunk)])
                else:
                    candidate.append(runner.predict(chunk))
    finally:
        torch_model.train(was_training)
    report = compare_logits(np.concatenate(reference), np.concatenate(candidate), tolerance)
    if not report.passed:
        raise ParityError(
            f"{where} does not match the PyTorch model: {report.summary()}; "
            "try exporter='legacy' or lowering='gather'"
        )
    return report


__all__ = ["DECIDED_MARGIN", "DEFAULT_TOLERANCE", "ParityReport", "check_parity", "compare_logits"]
