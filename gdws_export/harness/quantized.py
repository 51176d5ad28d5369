"""Robust accuracy of a quantized (INT8) engine, three ways, and the per-image worst case.

A white-box attack needs gradients, which an INT8 engine does not give, and the float PyTorch
model is not what the engine computes: its adversarial images, replayed on the engine, measure
transfer, not the engine's robustness. So an INT8 engine is attacked three ways:

(a) PGD on its fake-quantized PyTorch twin (`runtimes.fake_quant`: the engine's Q/DQ graph in
    PyTorch, straight-through rounding), robust accuracy measured on the twin;
(b) the twin's adversarial images replayed on the engine itself;
(c) the query-only Square Attack run on the engine's outputs, with AutoAttack's settings
    (p_init 0.8, 5000 queries, its schedule; fewer queries for a quicker, weaker check).

The headline is `ModelAccuracy.worst_case_accuracy`: per image, right clean and under all three,
so an image counts as robust only if every attack fails. Each attack alone overstates
robustness: (a) and (b) can miss what gradient masking by the rounding hides, and (c) is a
random search that only finds what its queries reach. Taking the minimum per image (not the
minimum of the three accuracies) also counts an image fooled by (a) but not (c) as fooled.
"""

from __future__ import annotations

import torch
from torch import nn

from gdws_export.attacks import AttackConfig
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import DEFAULT_BATCH_SIZE, evaluate_accuracy
from gdws_export.harness.accuracy_report import AccuracyReport, SquareConfig
from gdws_export.runtimes.base import Runner

AUTOATTACK_SQUARE_QUERIES = 5000  # AutoAttack's "standard" version


def quantized_robustness(
    engine: Runner,
    twin: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig | None = None,
    square_queries: int | None = AUTOATTACK_SQUARE_QUERIES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    name: str = "int8",
    data: str = "",
) -> AccuracyReport:
    """Robust accuracy of an INT8 engine: PGD on its twin, replayed on it, and Square on it.

    Args:
        engine: the INT8 engine's runner (activated here).
        twin: its fake-quantized PyTorch twin (`runtimes.fake_quant.twin_of_engine`).
        x: images, float (N, C, H, W) in [0, 1].
        y: int64 labels (N,).
        attack: the white-box attack run on the twin (a) and replayed on the engine (b).
            Defaults to `AttackConfig()`: PGD-10, L-inf, eps 8/255.
        square_queries: Square's query budget on the engine (c), with AutoAttack's other
            settings and `attack`'s eps and seed; None skips it. L-inf attacks only.
        batch_size: samples per attack / inference batch.
        name: the model's name in the report.
        data: a description of the data for the report.

    Returns:
        An AccuracyReport with one model: the PGD row gives (a) as `robust_accuracy` and (b)
        as `engine_accuracy`, the Square row (c); `worst_case_accuracy` is the headline.

    Example:
        >>> twin = twin_of_engine("ort", "m.int8.ort.onnx", "m.int8.ort.json")  # doctest: +SKIP
        >>> report = quantized_robustness(OrtRunner.from_settings("m.int8.ort.json"), twin,
        ...     x, y, attack=AttackConfig("pgd", eps=0.1, steps=20))  # doctest: +SKIP
        >>> report.models[0].worst_case_accuracy  # doctest: +SKIP
    """
    attack = AttackConfig() if attack is None else attack
    if not isinstance(attack, AttackConfig) or attack.name == "none":
        raise InvalidInputError(
            "quantized_robustness: attack must be an AttackConfig of a gradient attack "
            f"(pgd or fgsm), got {attack!r}"
        )
    square = None
    if square_queries is not None:
        if attack.norm != "linf":
            raise InvalidInputError(
                "quantized_robustness: the Square Attack here is L-inf only; pass "
                "square_queries=None for an L2 attack"
            )
        square = SquareConfig.autoattack(attack.eps, queries=square_queries, seed=attack.seed)
    return evaluate_accuracy(
        {name: twin}, x, y, attacks=[attack], engines={name: engine}, square=square,
        batch_size=batch_size, data=data,
    )  # fmt: skip


__all__ = ["AUTOATTACK_SQUARE_QUERIES", "quantized_robustness"]
