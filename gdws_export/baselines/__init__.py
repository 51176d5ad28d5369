"""Baselines GDWS is compared with on the same harness: plain depthwise-separable convs from
the same SVD (`depthwise_separable`), L1-norm filter pruning without fine-tuning
(`prune_filters`) and input-channel pruning (`prune_input_channels`: GDWS's zero-kernel
channels without its low-rank part). Torch only, like the GDWS math."""

from gdws_export.baselines.input_channels import (
    ChannelSubsetConv2d,
    InputPruningReport,
    prune_input_channels,
)
from gdws_export.baselines.pruning import (
    PrunedLayer,
    PruneSite,
    PruningReport,
    find_prune_sites,
    l1_order,
    prune_filters,
)
from gdws_export.baselines.separable import depthwise_separable

__all__ = [
    "ChannelSubsetConv2d",
    "InputPruningReport",
    "PruneSite",
    "PrunedLayer",
    "PruningReport",
    "depthwise_separable",
    "find_prune_sites",
    "l1_order",
    "prune_filters",
    "prune_input_channels",
]
