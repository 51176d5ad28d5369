"""Simplify an exported graph with onnxsim, or onnxslim when onnxsim is missing or fails.

Both have changed outputs in the past (onnxslim's EliminationSlice, for one), so each result
is run against the unsimplified graph on the same input and dropped when the outputs differ,
when the batch axis stopped being dynamic, or when a non-standard op appeared.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

from gdws_export._optional import require
from gdws_export.errors import GDWSExportError, MissingDependencyError
from gdws_export.lowering.export import check_graph

SIMPLIFIERS = ("onnxsim", "onnxslim")


@dataclass
class SimplifyResult:
    """The graph to ship and how it was obtained.

    Attributes:
        model: the simplified graph (the input graph when every simplifier failed).
        tool: "onnxsim", "onnxslim" or "none".
        notes: one line per simplifier that was tried and rejected, saying why.
    """

    model: object
    tool: str
    notes: list[str] = field(default_factory=list)


def simplify_model(
    model, check_input: np.ndarray, *, dynamic_batch: bool = True, rtol: float = 1e-5
) -> SimplifyResult:
    """Simplify `model`; keep the first simplifier whose graph reproduces the outputs.

    Args:
        model: an `onnx.ModelProto` with one input and one output (see `export`).
        check_input: a batch both graphs are run on.
        dynamic_batch: the simplified graph must keep a dynamic batch axis.
        rtol: allowed max |difference| relative to the largest |output|.
    """
    from gdws_export.runtimes import OrtRunner

    with OrtRunner(model.SerializeToString()) as runner:
        expected = runner.predict(check_input)
    scale = max(float(np.abs(expected).max()), 1e-12)
    notes = []
    for tool in SIMPLIFIERS:
        try:
            candidate = _run(tool, model)
            check_graph(candidate, dynamic_batch=dynamic_batch)
            with OrtRunner(candidate.SerializeToString()) as runner:
                got = runner.predict(check_input)
        except MissingDependencyError as exc:
            notes.append(f"{tool}: not installed ({exc})")
            continue
        except GDWSExportError as exc:
            notes.append(f"{tool}: {exc}")
            continue
        except Exception as exc:  # a simplifier crash must not fail the export
            first = (str(exc).strip().splitlines() or [""])[0]
            notes.append(f"{tool}: failed ({type(exc).__name__}: {first})")
            continue
        diff = float(np.abs(got - expected).max()) / scale if got.shape == expected.shape else 1.0
        if diff > rtol:
            notes.append(f"{tool}: changed the outputs (max relative diff {diff:.2e}); not used")
            continue
        return SimplifyResult(candidate, tool, notes)
    return SimplifyResult(model, "none", notes)


def _run(tool: str, model):
    # Both print progress tables; keep the caller's stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        if tool == "onnxsim":
            simplified, ok = require("onnxsim").simplify(model)
            if not ok:
                raise GDWSExportError("onnxsim's own check failed")
            return simplified
        return require("onnxslim").slim(model)


__all__ = ["SIMPLIFIERS", "SimplifyResult", "simplify_model"]
