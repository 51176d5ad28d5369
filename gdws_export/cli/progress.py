"""What the export command shows: a live stage line while it works, a summary when done."""

from __future__ import annotations

from typing import TextIO

from gdws_export import _progress
from gdws_export.pipeline.report import ExportReport, top1_text

# Stages that draw their own progress bar (noise gains): no second bar, and the stage line
# must not share its terminal line.
_OWN_BAR_STAGES = ("alphas",)


class StageLine:
    """A `ProgressCallback` printing "label ... done (1.2 s)" per stage, or nothing if disabled.

    With `bars`, each stage instead shows a tqdm bar of the images its attacks and calibration
    passes have done (`gdws_export._progress` ticks), and "label: done (1.2 s)" when it ends.

    Example:
        >>> run_export(config, progress=StageLine(sys.stderr, enabled=True))  # doctest: +SKIP
        loading the model ... done (0.1 s)
    """

    def __init__(self, stream: TextIO, *, enabled: bool, bars: bool = False) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bars = bars and enabled
        self._open: str | None = None  # the label whose line awaits "done"
        self._bar = None  # (tqdm bar, listener token) of the running stage

    def __call__(self, stage: str, label: str, seconds: float | None) -> None:
        if not self.enabled:
            return
        if seconds is None:
            self._start(stage, label)
        else:
            self._end(label, seconds)
        self.stream.flush()

    def _start(self, stage: str, label: str) -> None:
        if stage in _OWN_BAR_STAGES:
            self.stream.write(f"{label} ...\n")
        elif self.bars:
            from tqdm.auto import tqdm

            bar = tqdm(desc=label, unit="img", leave=False, file=self.stream)
            self._bar = (bar, _progress.listen(bar.update))
        else:
            self._open = label
            self.stream.write(f"{label} ...")

    def _end(self, label: str, seconds: float) -> None:
        if self._bar is not None:
            bar, token = self._bar
            _progress.stop(token)
            bar.close()
            self._bar = None
        if self._open == label:
            self.stream.write(f" done ({seconds:.1f} s)\n")
            self._open = None
        else:
            self.stream.write(f"{label}: done ({seconds:.1f} s)\n")


def summary(report: ExportReport) -> str:
    """Where the outputs are and the headline figures, for stdout."""
    if report.dry_run:
        return _plan(report)
    out = report.output_dir
    total = sum(report.timings.values())
    target = f"{report.settings['target']} {report.settings['precision']}"
    lines = [f"gdws-export: exported {report.model['path']} to {out}/ ({target}, {total:.1f} s)"]
    rows = [("engine", report.files.get("engine")), ("report", report.files.get("report_md"))]
    rows += [("onnx", report.files[k]) for k in ("original_onnx", "gdws_onnx") if k in report.files]
    if "alphas" in report.files:
        rows.append(("alphas", report.files["alphas"]))
    if report.files.get("shipped_program") not in (None, report.files.get("engine")):
        rows.append(("twin", report.files["shipped_program"]))
    lines += [f"  {name:<8}{out}/{path}" for name, path in rows]
    if report.triton:
        lines.append(f"  {'triton':<8}{report.triton['model_dir']} ({report.triton['platform']})")
    lines.append(f"  {'MACs':<8}{_macs(report)}")
    if report.search:
        lines.append(f"  {'search':<8}{search_line(report.search)}")
    speed_check = report.exports.get("gdws", {}).get("speed_check")
    if speed_check:
        lines.append(f"  {'speed':<8}{speed_check}")
    if report.original_ships:
        lines.append(f"  {'GDWS':<8}{report.original_ships} (speed-up 1.00x)")
    engine = report.parity.get("engine")
    if engine:
        lines.append(
            f"  {'parity':<8}engine vs its source: max |diff| {engine['max_abs_diff']:.2g}, top-1 "
            f"agreement {100 * engine['top1_agreement']:.1f} %"
        )
    approx = report.parity.get("approximation")
    if approx:
        kept = len(approx.get("original_convs_kept", []))
        note = ""
        if kept:
            verb = "keeps its" if kept == 1 else "keep their"
            note = f" ({kept} layer{'s' * (kept != 1)} {verb} conv: faster on the target)"
        inputs = " ".join(str(w) for w in (approx["n_inputs"], approx.get("inputs")) if w)
        method = "" if report.method == "gdws" else f"{report.method} "
        lines.append(
            f"  {'GDWS' if not method else 'approx':<8}{method}against the original model on "
            f"{inputs} inputs: max |logit diff| "
            f"{approx['max_abs_diff']:.3g} ({100 * approx['relative_diff']:.2g} % of the logit "
            f"scale), top-1 agreement {top1_text(approx)}{note}"
        )
    return "\n".join(lines)


def _plan(report: ExportReport) -> str:
    shape = "x".join(map(str, report.model["input_shape"]))
    lines = [f"gdws-export: plan for {report.model['path']} (input N x {shape}; dry run, "
             "nothing written)", ""]  # fmt: skip
    if report.approximation:
        alphas = report.model["alphas"]
        title = "GDWS" if report.method == "gdws" else f"--method {report.method}"
        lines += [f"{title} with {report.budget_text()}; alphas: {alphas}", ""]
        lines += [report.plan_table(), ""]
    if report.original_ships:
        lines += [f"{report.original_ships} (speed-up 1.00x)", ""]
    if report.search:
        lines += [f"Operating point: {search_line(report.search)}", ""]
    lines.append(f"MACs: {_macs(report)}")
    gdws_layers = [r for r in report.layer_rows() if r["status"] == "gdws"]
    if report.settings.get("lowering") == "auto" and gdws_layers:
        lines.append("lowering 'auto' picks each layer's form by timing it at export")
    return "\n".join(lines)


def _macs(report: ExportReport) -> str:
    before = report.macs.get("original", 0)
    after = report.macs.get("shipped", report.macs.get("gdws", before))
    ratio = after / before if before else 1.0
    params = report.params
    text = f"{before:,} -> {after:,} per image ({ratio:.2f}x)"
    if "gdws" in params:
        text += f"; params {params['original']:,} -> {params.get('shipped', params['gdws']):,}"
    return text


def search_line(search: dict) -> str:
    """The operating-point search in one line: what shipped and its held-out figures."""
    original = 100 * search["original"]["robust"]
    if search["chosen"] is None:
        return f"{search['reason']} (robust accuracy of the original {original:.1f} %)"
    p = search["probes"][search["chosen"]]
    low, high = p["interval"]
    speed = f", {p['speedup']:.2f}x" if p.get("speedup") else ""
    exact = f", {', '.join(p['exact'])} kept exact" if p.get("exact") else ""
    return (
        f"MAC ratio {p['mac_ratio']:g} ({p['measure']} alphas{exact}{speed}): robust accuracy "
        f"{original:.1f} % -> {100 * p['robust']:.1f} % on {search['held_out']} held-out images "
        f"(drop {p['drop_points']:+.2f} points, 95 % interval {low:+.2f} .. {high:+.2f})"
    )
