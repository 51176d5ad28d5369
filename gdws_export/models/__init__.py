"""Architectures for robust CIFAR/MNIST-size CNNs, by name: `create_model("preact_resnet18")`.

Importing this package registers every architecture (the registry dict is the only global
state it fills). Models take images in [0, 1] and normalize inside (`model.normalize`).
"""

from gdws_export.models import lenet, resnet, vgg, wideresnet  # noqa: F401 (registers them)
from gdws_export.models.checkpoint import (
    load_checkpoint,
    models_dir,
    read_checkpoint,
    save_checkpoint,
)
from gdws_export.models.layers import Normalize
from gdws_export.models.registry import (
    ModelArgs,
    ModelConfig,
    create_model,
    list_models,
    load_model,
    model_config,
    register_model,
)

__all__ = [
    "ModelArgs",
    "ModelConfig",
    "Normalize",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "model_config",
    "models_dir",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
