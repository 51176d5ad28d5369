"""Low-rank compression methods beside GDWS (issue #30): the math and the modules only.

- `Tucker2Conv2d` / `LowRankConv2d`: a KxK conv as 1x1 -> KxK core -> 1x1 (Tucker-2, from
  the HOSVD) or KxK -> 1x1 (truncated SVD of the M x C*Kh*Kw matricization); `factors`
  holds the factorizations and their exact errors for every rank.
- `approximate_lowrank`: ranks of all convs chosen together under a MAC budget
  (`allocation`: exact multiple-choice knapsack by Pareto DP, or the GDWS-style greedy).
- `KroneckerLinear`: a Linear layer as a sum of Kronecker products (Van Loan-Pitsianis).

Like `gdws_export.gdws` this floor imports only torch, `gdws_export.errors` and
`gdws_export.gdws`; every module is plain `nn.Conv2d` / matmul, so it exports to plain ONNX.

Example:
    >>> small, report = approximate_lowrank(model, mac_ratio=0.5, input_shape=(3, 32, 32))
    ... # doctest: +SKIP
"""

from gdws_export.lowrank.allocation import (
    Allocation,
    allocate,
    exact_allocation,
    greedy_allocation,
)
from gdws_export.lowrank.approximate import METHODS, approximate_lowrank
from gdws_export.lowrank.conv import ConvGeometry, LowRankConv2d, Tucker2Conv2d
from gdws_export.lowrank.factors import (
    LowRankFactors,
    Tucker2Factors,
    lowrank_factors,
    tucker2_factors,
)
from gdws_export.lowrank.kronecker import (
    KroneckerLinear,
    kronecker_factors,
    kronecker_macs,
    kronecker_shape,
)
from gdws_export.lowrank.report import LowRankLayerReport, LowRankReport

__all__ = [
    "METHODS",
    "Allocation",
    "ConvGeometry",
    "KroneckerLinear",
    "LowRankConv2d",
    "LowRankFactors",
    "LowRankLayerReport",
    "LowRankReport",
    "Tucker2Conv2d",
    "Tucker2Factors",
    "allocate",
    "approximate_lowrank",
    "exact_allocation",
    "greedy_allocation",
    "kronecker_factors",
    "kronecker_macs",
    "kronecker_shape",
    "lowrank_factors",
    "tucker2_factors",
]
