"""Serving stacks: model repositories for inference servers (Triton)."""

from gdws_export.serving.triton import (
    TritonModel,
    has_dynamic_batch,
    triton_config,
    write_triton_model,
)

__all__ = ["TritonModel", "has_dynamic_batch", "triton_config", "write_triton_model"]
