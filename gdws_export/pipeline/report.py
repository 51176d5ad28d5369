"""`ExportReport`: what one export did, saved as `report.json` (stable schema) and `report.md`.

`report.json` is one document in the envelope the harness reports use (docs/report-schema.md):

    {"schema_version": 1, "kind": "export",
     "tool": {"name": "gdws-export", "version": "..."}, "created": "<UTC ISO 8601>",
     "report": {...}}

Fields are only added within a schema version; a renamed, removed or re-interpreted field
bumps `schema_version`. The fields of "report":

- `dry_run`: true when nothing was built (`--dry-run`).
- `settings`: the resolved `ExportConfig`.
- `model`: file, kind, architecture, input shape, normalization, alphas, classes, loader notes.
- `approximation`: the method's report (`MethodReport.to_dict()`; for GDWS
  `ApproximationReport.to_dict()`) with its "method" name: per-layer status, kernels (ranks,
  filters), MACs, params, weighted error; null with `--no-gdws`.
- `original_ships`: why the export ships the original model although GDWS was asked for (no
  conv GDWS can replace, or the assembled GDWS graph was not faster when timed against the
  original's), "... so the original ships"; its speed-up is then 1.00x. Null otherwise.
- `sensitivity_choice`: with `--sensitivity auto`, `MeasureChoice.to_dict()`: the held-out
  images and attack, each candidate measure's clean and robust accuracy on them and build
  time, and the measure chosen; else null.
- `search`: without an explicit budget, the operating-point search
  (`SearchResult.to_dict()`): the robust-accuracy budget, held-out images and attack, the
  original's accuracies, every probe (MAC ratio, measure, clean and robust accuracy, paired
  drop with its 95 % interval, verdict), the probe shipped (its index, null for the original)
  and why; else null.
- `held_out_accuracy`: with held-out `calib` images (the search or `--sensitivity auto`),
  `AccuracyReport.to_dict()` of the original and the shipped model on them: clean and
  white-box robust accuracy in PyTorch (the attack that judged the candidates) and the same
  adversarial images replayed on each engine (original.onnx on ONNX Runtime, the shipped
  engine); else null.
- `refit`: `RefitReport.to_dict()` when the 1x1 convs were refit on the calibration data
  (inputs, ridge, per layer the relative output error before and after), else null.
- `exports`: "original" and "gdws": the lowering's `ExportResult.to_dict()` (forms, timings).
- `build`: `BuildResult.to_dict()`, paths relative to the output directory; for INT8,
  `build.quantization`: the data types, weight range (`reduce_range`) and format, the CPU
  flags and reason they were chosen for, calibration samples and ORT's pre-processing.
- `parity`: `ParityReport` dicts: "onnx_original" and "onnx_gdws" (ONNX vs PyTorch), "engine"
  (engine vs its source), "approximation" (the GDWS model as shipped vs the original PyTorch
  model, informative: `passed` and `tolerance` null; `original_convs_kept` lists the layers
  where the lowering shipped the original conv because it was faster; `inputs` says whether
  they were "calibration" images or "random" ones, on which top-1 agreement means nothing).
  Every entry has `decided_inputs` and `decided_top1_agreement`: top-1 agreement on the
  inputs whose top-2 margin is not near a tie (`lowering.parity.DECIDED_MARGIN`).
- `macs`, `params`: whole model, per image: "original", "gdws", "shipped" (as exported; params
  "shipped" only when some layers keep their original conv).
- `files`: role -> path relative to the output directory; `output_dir`.
- `triton`: the Triton model written (name, platform, I/O, model_dir), or null.
- `versions`: python, torch, onnx, onnxruntime, numpy, tensorrt (when built), gdws-export.
- `timings`: seconds per stage; `warnings`: lines the user should read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
KIND = "export"
TOOL_NAME = "gdws-export"


@dataclass
class ExportReport:
    """The record of one `run_export` (see the module docstring for the fields)."""

    tool_version: str
    created: str
    dry_run: bool
    settings: dict[str, Any]
    model: dict[str, Any]
    approximation: dict[str, Any] | None = None
    original_ships: str | None = None
    refit: dict[str, Any] | None = None
    sensitivity_choice: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    held_out_accuracy: dict[str, Any] | None = None
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    build: dict[str, Any] | None = None
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None
    triton: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (see the module docstring)."""
        data = asdict(self)
        tool = {"name": TOOL_NAME, "version": data.pop("tool_version")}
        created = data.pop("created")
        return {"schema_version": SCHEMA_VERSION, "kind": KIND, "tool": tool,
                "created": created, "report": data}  # fmt: skip

    def to_json(self) -> str:
        """Strict JSON: a NaN or infinite figure (a parity check on all-zero logits) is null."""
        return json.dumps(_finite(self.to_dict()), indent=2, default=_jsonable, allow_nan=False)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ExportReport:
        """Read a document written by `to_dict`.

        Raises:
            InvalidInputError: not an export report, or another schema version.
        """
        from gdws_export.errors import InvalidInputError

        if not isinstance(document, dict) or document.get("kind") != KIND:
            raise InvalidInputError("not a gdws-export export report (kind is not 'export')")
        if document.get("schema_version") != SCHEMA_VERSION:
            raise InvalidInputError(
                f"report schema_version {document.get('schema_version')!r} is not "
                f"{SCHEMA_VERSION}; read it with the gdws-export version that wrote it"
            )
        return cls(tool_version=document["tool"]["version"], created=document["created"],
                   **document["report"])  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExportReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def path(self, role: str) -> Path | None:
        """Absolute path of an output file by role ("engine", "report_json", ...), or None."""
        if role not in self.files or self.output_dir is None:
            return None
        return Path(self.output_dir) / self.files[role]

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per conv: the approximation's fields plus the lowering form shipped."""
        if not self.approximation:
            return []
        forms = {
            layer["name"]: layer["form"] for layer in self.exports.get("gdws", {}).get("layers", [])
        }
        rows = []
        for layer in self.approximation["layers"]:
            row = dict(layer)
            if layer["status"] == "gdws":
                row["lowering"] = forms.get(layer["name"], self.settings.get("lowering", ""))
            else:
                row["lowering"] = "-"
            rows.append(row)
        return rows

    def budget_text(self) -> str:
        """How much was approximated: 'mac_ratio 0.75', 'beta 0.01', or 'time_ratio 0.5
        (predicted conv time 0.48 of the original's on ONNX Runtime)'."""
        s = self.settings
        budget = [k for k in ("beta", "mac_ratio", "time_ratio") if s.get(k) is not None]
        text = ", ".join(f"{k} {s[k]}" for k in budget)
        predicted = (self.approximation or {}).get("predicted_time_ratio")
        if predicted is not None:
            text += f" (predicted conv time {predicted:.2f} of the original's on ONNX Runtime)"
        return text

    @property
    def method(self) -> str:
        """The compression method the export ran ("gdws" for reports from before methods)."""
        return (self.approximation or {}).get("method") or self.settings.get("method", "gdws")

    def plan_table(self) -> str:
        """The per-layer Markdown table: shape, status, kernels (GDWS; ranks or filters kept
        for other methods), lowering, MACs, params."""
        kept = "kernels" if self.method == "gdws" else "kept"
        rows = [
            f"| layer | shape | status | {kept} | lowering | MACs before | MACs after "
            "| params before | params after |",
            "|---|---|---|---|---|---:|---:|---:|---:|",
        ]
        for r in self.layer_rows():
            kh, kw = r["kernel_size"]
            shape = f"{r['out_channels']}x{r['in_channels'] // r['groups']}x{kh}x{kw}"
            if "factor_shape" in r:  # a Linear layer
                shape = f"{r['out_channels']}x{r['in_channels']}"
            kernels = _kept_text(r)
            status = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
            rows.append(
                f"| {r['name']} | {shape} | {status} | {kernels} | {r['lowering']} "
                f"| {r['macs_before']:,} | {r['macs_after']:,} | {r['params_before']:,} "
                f"| {r['params_after']:,} |"
            )
        return "\n".join(rows)

    def to_markdown(self) -> str:
        """A readable report: summary, per-layer table, parity, settings, versions, timings."""
        s = self.settings
        title = "Export plan (dry run)" if self.dry_run else "Export report"
        lines = [f"# gdws-export: {title}", ""]
        lines += [f"- model: `{self.model.get('path')}` ({self.model.get('kind')})"]
        if self.model.get("input_shape"):
            shape = "x".join(map(str, self.model["input_shape"]))
            norm = self.model.get("normalization")
            norm = f"normalized in the graph ({norm})" if norm else "no normalization added"
            lines += [f"- input: N x {shape}, {norm}"]
        if s.get("gdws") and self.approximation:
            alphas = self.model.get("alphas", "none (unweighted)")
            label = "GDWS" if self.method == "gdws" else f"method {self.method}"
            lines += [f"- {label}: {self.budget_text()}, alphas: {alphas}"]
        elif not s.get("gdws"):
            lines += ["- GDWS: off (--no-gdws), the original model exported"]
        if s.get("gdws") and self.original_ships:
            lines += [f"- shipped: {self.original_ships}; speed-up 1.00x"]
        elif self.exports.get("gdws", {}).get("speed_check"):
            lines += [f"- speed check: {self.exports['gdws']['speed_check']}"]
        lines += [f"- target: {s['target']} {s['precision']}, lowering {s['lowering']}"]
        lines += _int8_lines((self.build or {}).get("quantization"))
        for key in ("original", "gdws", "shipped"):
            if key in self.macs:
                params = f", params {self.params[key]:,}" if key in self.params else ""
                lines += [f"- MACs per image, {key}: {self.macs[key]:,}{params}"]
        if self.files:
            lines += ["", "## Files", ""]
            lines += [f"- {role}: `{path}`" for role, path in self.files.items()]
        if self.triton:
            lines += [f"- Triton model: `{self.triton['model_dir']}` ({self.triton['platform']})"]
        if self.approximation:
            lines += ["", "## Layers", "", self.plan_table()]
        if self.sensitivity_choice:
            lines += ["", "## Sensitivity choice", "", _choice_text(self.sensitivity_choice)]
        if self.search:
            lines += ["", "## Operating point", "", _search_text(self.search)]
        if self.held_out_accuracy:
            lines += ["", _held_out_text(self.held_out_accuracy)]
        if self.refit:
            lines += [
                "",
                "## 1x1 refit",
                "",
                f"Each GDWS layer's 1x1 conv refit to the original conv's outputs on "
                f"{self.refit['inputs']} calibration inputs ({_refit_inputs(self.refit)}), ridge "
                f"{self.refit['ridge']:g}; relative output error of each layer, in the "
                "approximated model:",
                "",
                "| layer | kernels | error before | error after |",
                "|---|---:|---:|---:|",
            ]
            lines += [f"| {r['name']} | {r['kernels']} | {r['error_before']:.4f} "
                      f"| {r['error_after']:.4f} |" for r in self.refit["layers"]]  # fmt: skip
        if self.parity:
            lines += ["", "## Parity", "", "| check | max abs diff | relative | top-1 agreement "
                      "| inputs | passed |", "|---|---:|---:|---:|---:|---|"]  # fmt: skip
            for name, p in self.parity.items():
                lines.append(
                    f"| {name} | {p['max_abs_diff']:.3g} | {p['relative_diff']:.3g} "
                    f"| {top1_text(p)} | {p['n_inputs']} | {_yes_no(p.get('passed'))} |"
                )
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {w}" for w in self.warnings]
        lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in s.items() if v not in (None, [], {})]
        lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in self.versions.items()]
        lines += ["", "## Timings", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in self.timings.items()]
        lines += ["", f"Written by gdws-export {self.tool_version} on {self.created}."]
        return "\n".join(lines) + "\n"


def _kept_text(row: dict[str, Any]) -> str:
    """What a layer kept of the most it could: kernels (GDWS), ranks (Tucker-2, two-factor,
    Kronecker) or filters (pruning); empty for a layer left alone."""
    if row.get("kernels"):
        return f"{row['kernels']}/{row['full_rank_kernels']}"
    if row.get("ranks"):
        return f"{tuple(row['ranks'])}/{tuple(row['max_ranks'])}".replace(",)", ")")
    if row.get("rank"):
        return f"{row['rank']}/{row['max_rank']}"
    if row.get("filters_after") and row["filters_after"] != row["out_channels"]:
        return f"{row['filters_after']}/{row['out_channels']} filters"
    return ""


def top1_text(parity: dict[str, Any]) -> str:
    """Top-1 agreement of a parity entry as it means something: not judged on random inputs
    (no true class, and a robust model's logits are near-ties there), and counted apart on the
    inputs whose top-2 margin is not near a tie."""
    if parity.get("inputs") == "random":
        return "not judged (random inputs)"
    text = f"{100 * parity['top1_agreement']:.1f} %"
    decided = parity.get("decided_inputs")
    if decided is None or decided == parity["n_inputs"]:
        return text
    if not decided:
        return f"{text} (every input near a tie)"
    return f"{text} ({100 * parity['decided_top1_agreement']:.1f} % of {decided} not near a tie)"


def _int8_lines(quantization: dict[str, Any] | None) -> list[str]:
    """The INT8 settings of the build and why they were chosen (none for FP32/FP16)."""
    if not quantization:
        return []
    from gdws_export.runtimes.int8_settings import settings_text

    return [
        f"- INT8: {settings_text(quantization)}, calibrated on "
        f"{quantization['calibration_samples']} samples ({quantization['calibration_method']}); "
        f"{quantization['reason']}"
    ]


def _yes_no(passed: bool | None) -> str:
    return "-" if passed is None else ("yes" if passed else "no")


def _cell(value: Any) -> str:
    text = json.dumps(value, default=_jsonable) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _choice_text(choice: dict) -> str:
    """The `--sensitivity auto` section: how the measures were judged, and each one's result."""
    from gdws_export.harness.measure_choice import MeasureChoice

    c = MeasureChoice.from_dict(choice)
    return (
        f"`--sensitivity auto` built the GDWS model with each measure below (same budget and "
        f"refit) and attacked it on {c.held_out} held-out calibration images ({c.attack}); "
        f"the one that kept the most images right clean and under attack ships: "
        f"**{c.chosen}**.\n\n{c.table()}"
    )


def _refit_inputs(refit: dict) -> str:
    """'clean and PGD at eps 0.2' (reports written before the field existed: no eps)."""
    eps = refit.get("attack_eps")
    return "clean and PGD" + ("" if eps is None else f" at eps {eps:g}")


def _search_text(search: dict) -> str:
    """The operating-point section: the goal, the original's accuracies, every probe (fewest
    MACs first) and the ranking of the layers to keep exact."""
    timed = any(p.get("speedup") is not None for p in search["probes"])
    original_macs = search.get("original_macs") or 0
    lines = [
        f"Searched for {search['goal']}, judged on {search['held_out']} held-out calibration "
        f"images ({search['attack']}; the original: clean "
        f"{100 * search['original']['clean']:.1f} %, robust "
        f"{100 * search['original']['robust']:.1f} %), paired on the same images; "
        f"{search['reason']}.",
        "",
        "| MAC ratio | kept exact | MACs | measure | clean % | robust % | drop (points) "
        "| 95 % interval | verdict " + ("| speed-up " if timed else "") + "| shipped |",
        "|---:|---|---:|---|---:|---:|---:|---|---|" + ("---:|" if timed else "") + "---|",
    ]
    chosen = search["chosen"]
    for index, p in sorted(enumerate(search["probes"]), key=lambda ip: ip[1]["macs"]):
        low, high = p["interval"]
        speed = f"| {p['speedup']:.2f}x " if timed and p.get("speedup") else ("| " if timed else "")
        verdict = p["verdict"] if search["max_robust_drop"] is not None else "-"
        share = f" ({p['macs'] / original_macs:.2f}x)" if original_macs else ""
        lines.append(
            f"| {p['mac_ratio']:.3f} | {', '.join(p.get('exact', [])) or '-'} "
            f"| {p['macs']:,}{share} | {p['measure']} | {100 * p['clean']:.1f} "
            f"| {100 * p['robust']:.1f} | {p['drop_points']:+.2f} | {low:+.2f} .. {high:+.2f} "
            f"| {verdict} {speed}| {'yes' if index == chosen else ''} |"
        )
    ranking = search.get("exact_ranking") or []
    if search.get("exact_note"):
        lines += ["", f"Layers kept exact: {search['exact_note']}" + (":" if ranking else ".")]
    if ranking:
        lines += [
            "",
            "| layer | logit error under attack removed (% of the probe's) | MACs put back |",
            "|---|---:|---:|",
            *(f"| {r['name']} | {r['gain']:.1f} | {r['macs']:,} |" for r in ranking),
        ]
    return "\n".join(lines)


def _held_out_text(accuracy: dict) -> str:
    """The original's and the shipped engine's accuracy on the held-out images."""
    from gdws_export.harness.accuracy import AccuracyReport

    table = AccuracyReport.from_dict(accuracy).to_markdown()
    return table.replace("## Accuracy", "## Accuracy on the held-out images", 1).rstrip("\n")
