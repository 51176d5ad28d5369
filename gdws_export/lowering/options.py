"""`ExportOptions`: how `export_onnx` lowers, exports, simplifies and checks a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gdws_export.errors import InvalidInputError
from gdws_export.lowering.auto import DEFAULT_CANDIDATES
from gdws_export.lowering.export import EXPORTERS
from gdws_export.lowering.forms import is_form
from gdws_export.lowering.parity import DEFAULT_TOLERANCE


@dataclass(frozen=True)
class ExportOptions:
    """The settings of one `export_onnx` run, validated.

    Attributes:
        lowering: "auto" (time the forms per layer on ONNX Runtime, keep the fastest, the
            original conv included, a GDWS form only by `SPEED_MARGIN`; then time the whole
            model so chosen against all-"gather" and the original convs, ship the fastest of
            the three, a GDWS one only if a confirmation round against the original convs
            finds it still faster by the margin), or one form for every layer: "gather"
            (reference), "uniform", "slots", "fold", "fold-<S>", "dense" (see `forms`).
            Layers a fold cannot reach fall back to "gather" (noted in the report).
        exporter: "dynamo" (default) or "legacy".
        opset: ONNX opset; None means 18.
        dynamic_batch: symbolic batch axis (default); False fixes it to `batch`.
        simplify: run onnxsim (onnxslim as fallback); outputs are re-checked.
        parity_tolerance: max |logit difference| / logit scale allowed.
        threads: ONNX Runtime intra-op threads for `auto`'s timings (None: its default).
        batch: batch size `auto` times at (and the fixed batch when not dynamic).
        align: channel alignment of the forms; None picks 16 on AVX-512 CPUs, else 8.
        candidates: forms `auto` times.
        repeats: `auto`'s interleaved timing rounds.

    Example:
        >>> ExportOptions(lowering="gather", batch=32).dynamic_batch
        True
    """

    lowering: str = "auto"
    exporter: str = "dynamo"
    opset: int | None = None
    dynamic_batch: bool = True
    simplify: bool = True
    parity_tolerance: float = DEFAULT_TOLERANCE
    threads: int | None = None
    batch: int = 1
    align: int | None = None
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    repeats: int = 7

    def __post_init__(self) -> None:
        if self.lowering != "auto" and not is_form(self.lowering):
            raise InvalidInputError(
                f"unknown lowering {self.lowering!r}; use 'auto', 'gather', 'uniform', 'slots', "
                "'fold', 'fold-<S>' or 'dense'"
            )
        if self.exporter not in EXPORTERS:
            raise InvalidInputError(f"exporter must be one of {EXPORTERS}, got {self.exporter!r}")
        batch = self.batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidInputError(f"batch must be a positive int, got {batch!r}")

    @classmethod
    def resolve(cls, options: ExportOptions | None = None, **overrides: Any) -> ExportOptions:
        """`options` (defaults when None) with `overrides` applied.

        Example:
            >>> ExportOptions.resolve(None, lowering="gather").lowering
            'gather'
        """
        if options is None:
            return cls(**overrides)  # an unknown name is a TypeError, as for any keyword
        if not isinstance(options, cls):
            raise InvalidInputError(
                f"options must be an ExportOptions, got {type(options).__name__}"
            )
        return dataclasses.replace(options, **overrides)
