"""Adversarial attacks in plain torch: white-box PGD / FGSM and the query-only Square Attack.

All attacks take images in [0, 1] (normalization belongs inside the model) and a model in eval
mode. Gradient attacks need the PyTorch model; `square_attack` needs only logits, so it runs on
exported engines. We implement them here rather than wrap torchattacks (pins old requests,
needs torchvision, pulls a CUDA torch) or ART (scipy + scikit-learn, numpy-based wrappers).
"""

from gdws_export.attacks.config import (
    ATTACK_NAMES,
    AttackConfig,
    CalibrationConfig,
    run_attack,
)
from gdws_export.attacks.gradient import default_step_size, fgsm, pgd
from gdws_export.attacks.square import square_attack

__all__ = [
    "ATTACK_NAMES",
    "AttackConfig",
    "CalibrationConfig",
    "default_step_size",
    "fgsm",
    "pgd",
    "run_attack",
    "square_attack",
]
