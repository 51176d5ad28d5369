"""Compression methods behind one interface (issue #30), between the math and the pipeline.

A method is a validated config dataclass and a `Method` whose handler replaces modules of the
types it declares and reports, per layer, what it did (name, status, MACs and parameters
before and after, error); everything it produces exports to plain ONNX ops. The pipeline,
the operating-point search and the sweep take a method by name (`--method tucker2`,
`--method gdws,kronecker` for a combination). Registered here:

- `gdws`: Generalized Depthwise-Separable convs (`approximate`), the default;
- `dws`: plain depthwise-separable convs; `l1-prune`: L1 filter pruning (the baselines);
- `tucker2`, `lowrank`: Tucker-2 and two-factor low-rank convs (`approximate_lowrank`);
- `kronecker`: Linear layers as sums of Kronecker products, under a parameter budget.

Adding one: docs/methods.md.

Example:
    >>> from gdws_export.methods import Budget, get_method
    >>> small, report = get_method("tucker2").apply(model, Budget(mac_ratio=0.5))
    ... # doctest: +SKIP
"""

# The built-in methods register themselves on import, one module each.
from gdws_export.methods import dws, gdws, kronecker, lowrank, pruning
from gdws_export.methods.base import (
    Budget,
    Method,
    MethodConfig,
    MethodInputs,
    MethodReport,
    Site,
)
from gdws_export.methods.registry import (
    compress,
    get_method,
    list_methods,
    method_for,
    register_method,
)

__all__ = [
    "Budget",
    "Method",
    "MethodConfig",
    "MethodInputs",
    "MethodReport",
    "Site",
    "compress",
    "dws",
    "gdws",
    "get_method",
    "kronecker",
    "list_methods",
    "lowrank",
    "method_for",
    "pruning",
    "register_method",
]
