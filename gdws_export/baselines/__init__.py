"""Baselines GDWS is compared with on the same harness: plain depthwise-separable convs from
the same SVD (`depthwise_separable`) and L1-norm filter pruning without fine-tuning
(`prune_filters`). Torch only, like the GDWS math."""

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
    "PruneSite",
    "PrunedLayer",
    "PruningReport",
    "depthwise_separable",
    "find_prune_sites",
    "l1_order",
    "prune_filters",
]
