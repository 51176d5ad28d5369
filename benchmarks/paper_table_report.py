"""The paper table's results: dataclasses that save to and load from JSON, the Markdown report,
the robust-accuracy-vs-FPS plot, and the plain-language verdict on each target."""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.paper_table_variants import parse_variant
from gdws_export._files import atomic_write_bytes, atomic_write_text
from gdws_export._optional import require
from gdws_export.harness.measure_choice import MeasureChoice

SCHEMA = "gdws-export/paper-table/1"
RESULTS = Path(__file__).parent / "results"
LOSS_TARGET_POINTS = 0.5
SPEEDUP_TARGET = 2.0
# One table times one export of each graph; fresh exports and sessions of the same row moved
# its speed-up by 10 % either way on the 2-core machines (session_noise.py: 1.72x-2.13x on the
# width-16 VGG-16), so a "met" this close to the target says so.
SPEEDUP_MARGIN = 1.1
CONFIRM_SAMPLES = 1000  # confirm_rows.py's default: a "met" on fewer images is provisional
RUNTIME_TARGET_MIN = 30.0
SPEED_FLOORS = (1.25, 1.5, 2.0)  # batch-32 speed-ups the matched-speed comparison uses

# The paper's Figure 1 (Dbouk & Shanbhag, NeurIPS 2021), as read off the figure in
# /work/shared/GDWS_NOTES.md (about +-0.2 % and +-2 FPS). QUOTED, not measured here.
PAPER_FIGURE_1 = (
    ("adversarially trained baseline", 52.4, 36, ""),
    ("GDWS", 51.8, 82, "2.3x"),
    ("GDWS, 1.2x smaller", 51.1, 106, "2.9x"),
    ("GDWS, 1.5x smaller", 46.2, 128, "3.6x"),
    ("HYDRA pruning 10x / 97x", "49.7 / 41.9", "36 / 41", ""),
    ("ADMM pruning 3x / 8x", "43.7 / 39.8", "79 / 134", ""),
)
QUOTED_LABEL = (
    "QUOTED from the paper (Figure 1, VGG-16 on CIFAR-10, PGD L-inf eps 8/255, NVIDIA Jetson "
    "Xavier), not measured here"
)


@dataclass
class Row:
    """One model of one checkpoint: how it was made, its size, speed and accuracy."""

    variant: str
    method: str
    sensitivity: str
    target_ratio: float | None
    conv_mac_ratio: float
    macs: int
    macs_ratio: float
    params: int
    lowering: str
    fps_b1: float
    fps_b32: float
    speedup_b1: float
    speedup_b32: float
    p90_ms_b1: float
    p90_ms_b32: float
    clean: float
    robust: float
    engine_clean: float | None
    engine_robust: float | None
    samples: int
    same_as_original: bool
    approximate_s: float
    export_s: float
    pareto: bool = False
    budget: str = "mac"  # what target_ratio is a fraction of: "mac" or "time"

    @property
    def robust_se_points(self) -> float:
        """Binomial standard error of the robust accuracy, in percentage points."""
        p = self.robust
        return 100 * math.sqrt(max(p * (1 - p), 0.0) / self.samples) if self.samples else 0.0


@dataclass
class CheckpointResult:
    """All rows of one checkpoint, with the reports behind them."""

    name: str
    arch: str
    path: str
    input_shape: list[int]
    attack: str
    sensitivity_seconds: dict[str, float]
    spectra: list[dict]
    rows: list[Row]
    speed: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    noise_floor: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    # per MAC ratio: the +refit row gdws-export's default would ship (export_default_choices)
    export_defaults: list[dict] = field(default_factory=list)
    kept_exact: list[str] = field(default_factory=list)  # convs every GDWS row kept (--keep-exact)

    def row(self, variant: str) -> Row:
        return next(r for r in self.rows if r.variant == variant)


@dataclass
class SpeedOnlyRow:
    """One full-size CIFAR architecture at one MAC ratio (synthetic trained-like spectra)."""

    arch: str
    mac_ratio: float | None
    macs: int
    macs_ratio: float
    params: int
    lowering: str
    fps_b1: float
    fps_b32: float
    speedup_b1: float
    speedup_b32: float
    p90_ms_b1: float
    approximate_s: float
    export_s: float


@dataclass(frozen=True)
class Confirmation:
    """A row rebuilt and attacked again on more images by confirm_rows.py: the paired change
    in robust accuracy of its ONNX Runtime replay against the original's, in points."""

    file: str
    checkpoint: str
    variant: str
    samples: int
    difference_points: float
    ci95_points: list[float]
    kept_exact: list[str] = field(default_factory=list)  # confirm_rows.py --keep-exact


def collect_confirmations(folder: Path, attack: str) -> list[Confirmation]:
    """Every confirm_rows.py row in `folder`'s *confirm*.json files attacked with `attack`
    (an export-default row counts as the row it shipped)."""
    found = []
    for path in sorted(Path(folder).glob("*confirm*.json")):
        for row in json.loads(path.read_text()).get("rows", []):
            replay, chosen = row.get("engine"), row.get("export_default")
            if row.get("attack") != attack or not replay:
                continue
            found.append(
                Confirmation(
                    file=path.with_suffix(".md").name, checkpoint=row["checkpoint"],
                    variant=chosen["variant"] if chosen else row["variant"],
                    samples=row["samples"],
                    difference_points=replay["difference_points"],
                    ci95_points=list(replay["ci95_points"]),
                    kept_exact=list(row.get("kept_exact", [])),
                )
            )  # fmt: skip
    return found


def confirmations_for(target: str, attack: str, folder: Path = RESULTS) -> list[Confirmation]:
    """The committed confirmations a table timed on `target` may cite: confirm_rows.py replays
    on ONNX Runtime only, so none for the other runtimes."""
    return collect_confirmations(folder, attack) if target == "ort" else []


@dataclass
class PaperTable:
    """The whole run: settings, machine, every checkpoint, and the speed-only table."""

    command: str
    created: str
    machine: dict
    load_before: list[float]
    load_after: list[float]
    settings: dict
    checkpoints: list[CheckpointResult]
    speed_only: list[SpeedOnlyRow] = field(default_factory=list)
    speed_only_settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    # committed confirm_rows.py results for this attack (collect_confirmations): the verdicts
    # cite those of the rows that meet the target here
    confirmations: list[Confirmation] = field(default_factory=list)
    confirmations_refreshed: str = ""  # when refresh_confirmations re-read them after the run

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> PaperTable:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a paper table ({data.get('schema')!r}, expected {SCHEMA!r})")
        data = {k: v for k, v in data.items() if k != "schema"}
        data["checkpoints"] = [
            CheckpointResult(**{**c, "rows": [Row(**r) for r in c["rows"]]})
            for c in data["checkpoints"]
        ]
        data["speed_only"] = [SpeedOnlyRow(**r) for r in data["speed_only"]]
        data["confirmations"] = [Confirmation(**c) for c in data.get("confirmations", [])]
        return cls(**data)


def write_results(table: PaperTable, stem: Path) -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.png` and `<stem>.md` (atomically, the Markdown last). The
    suffixes are appended: a stem like "run-0.25" keeps its ratio."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": Path(f"{stem}.json"), "plot": Path(f"{stem}.png"),
             "markdown": Path(f"{stem}.md")}  # fmt: skip
    atomic_write_text(paths["json"], json.dumps(table.to_dict(), indent=1, allow_nan=False) + "\n")
    plot(table, paths["plot"])
    atomic_write_text(paths["markdown"], markdown(table, paths["plot"].name))
    return paths


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _ratio(value: float | None, budget: str = "mac") -> str:
    if value is None:
        return ""
    return f"{value:g}" if budget == "mac" else f"time {value:g}"


def checkpoint_table(result: CheckpointResult) -> str:
    lines = [
        "| variant | sensitivity | budget asked / conv MAC ratio got | MACs (ratio) | params "
        "| lowering shipped | img/s b1 | img/s b32 | speed-up b1 / b32 | p90 ms b1 / b32 "
        "| clean % | robust % (+-SE) | engine clean % | engine robust % | approx s | export s "
        "| Pareto |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        same = " (= original)" if r.same_as_original else ""
        lines.append(
            f"| {r.variant}{same} | {r.sensitivity} | {_ratio(r.target_ratio, r.budget)} / "
            f"{r.conv_mac_ratio:.3f} | {r.macs / 1e6:.2f}M ({r.macs_ratio:.2f}) "
            f"| {r.params / 1e3:.0f}k | {r.lowering} | {r.fps_b1:.0f} | {r.fps_b32:.0f} "
            f"| {r.speedup_b1:.2f}x / {r.speedup_b32:.2f}x | {r.p90_ms_b1:.2f} / {r.p90_ms_b32:.1f} "
            f"| {_pct(r.clean)} | {_pct(r.robust)} +-{r.robust_se_points:.1f} "
            f"| {_pct(r.engine_clean)} | {_pct(r.engine_robust)} | {r.approximate_s:.1f} "
            f"| {r.export_s:.1f} | {'yes' if r.pareto else ''} |"
        )
    return "\n".join(lines)


def spectra_table(result: CheckpointResult) -> str:
    keys = [k for k in result.spectra[0] if k.startswith("top")] if result.spectra else []
    lines = [
        "| layer | weight | rank | " + " | ".join(f"energy in {k}" for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for s in result.spectra:
        lines.append(f"| {s['layer']} | {s['shape']} | {s['rank']} | "
                     + " | ".join(f"{100 * s[k]:.0f} %" for k in keys) + " |")  # fmt: skip
    return "\n".join(lines)


def robust_change(original: Row, row: Row) -> str:
    """'3.0 points lost', '0.5 points gained' or 'no change' in robust accuracy."""
    points = round(100 * (original.robust - row.robust), 1)
    if points == 0:
        return "no change in robust accuracy"
    return f"{abs(points):.1f} points {'lost' if points > 0 else 'gained'}"


def verdicts(table: PaperTable) -> list[str]:
    """One plain-language line per target and checkpoint: met or not, and by how much.

    A row's robust loss is the table's own, measured on its few hundred images, unless the
    row has committed confirmations (table.confirmations: confirm_rows.py, the same attack on
    at least CONFIRM_SAMPLES images, paired; the row built the same way, the same convs kept
    exact): then those on the most images decide, the worst of them, the more precise figure.
    A "met" on fewer than CONFIRM_SAMPLES images that no confirmation backs is provisional."""
    lines = []
    for result in table.checkpoints:
        original = result.row("original")
        faster = [r for r in result.rows if r.variant != "original"]
        tried = {r.variant: _confirmations(table, result, r) for r in faster}

        def within(row: Row, tried=tried, original=original) -> bool:
            if row.same_as_original:
                return False
            if tried[row.variant]:
                return _holds(tried[row.variant])
            return 100 * (original.robust - row.robust) <= LOSS_TARGET_POINTS

        best = max(filter(within, faster), key=lambda r: r.speedup_b32, default=None)
        met = best is not None and best.speedup_b32 >= SPEEDUP_TARGET
        fast = [r for r in faster if r.speedup_b32 >= SPEEDUP_TARGET]
        confirmed = [r for r in fast if within(r) and tried[r.variant]]
        refuted = [r for r in faster if tried[r.variant] and not _holds(tried[r.variant])]
        # cite the fastest confirmed row; without one, the fastest a confirmation refuted
        cited = max(confirmed or ([] if met else refuted), key=lambda r: r.speedup_b32,
                    default=None)  # fmt: skip
        if not met:
            status = "not met"
        elif confirmed:
            images = max(c.samples for c in tried[cited.variant])
            status = f"met, confirmed on {images} images"
        elif original.samples >= CONFIRM_SAMPLES:
            status = "met"
        else:
            status = f"met on {original.samples} images, unconfirmed"
        text = f"**{result.name}: {status}.** "
        if best is not None:
            text += (f"Best speed-up at <= {LOSS_TARGET_POINTS} points of robust loss: "
                     f"{best.speedup_b32:.2f}x at batch 32 ({best.variant}, "
                     f"{robust_change(original, best)} on these {original.samples} images"
                     f"{'; its confirmation decides' if tried[best.variant] else ''}). ")  # fmt: skip
        else:
            text += (
                f"No approximated model stays within {LOSS_TARGET_POINTS} points of the "
                "original's robust accuracy (rows that ship the original graph aside). "
            )
        if cited is not None:
            text += _confirmation_text(cited, tried[cited.variant]) + " "
        if met and best.speedup_b32 < SPEEDUP_TARGET * SPEEDUP_MARGIN:
            text += (f"Its {best.speedup_b32:.2f}x is within {SPEEDUP_MARGIN - 1:.0%} of the "
                     f"{SPEEDUP_TARGET:g}x target, as close as one export's speed-up moves "
                     "between fresh exports and sessions: check it with "
                     "`benchmarks/session_noise.py --lowering auto` before claiming it. ")  # fmt: skip
        if met and not confirmed and original.samples < CONFIRM_SAMPLES:
            text += (f"A row's robust accuracy on {original.samples} images has a "
                     f"standard error of {original.robust_se_points:.1f} points: confirm "
                     f"it on {CONFIRM_SAMPLES} images"
                     f"{confirm_hint(result.name, best.variant)} before claiming it. ")  # fmt: skip
        if fast:
            least = min(fast, key=lambda r: original.robust - r.robust)
            text += (
                f"At >= {SPEEDUP_TARGET:g}x the least loss on these images: {least.variant}, "
                f"{robust_change(original, least)}."
            )
        elif faster:
            fastest = max(faster, key=lambda r: r.speedup_b32)
            text += (
                f"No row reaches {SPEEDUP_TARGET:g}x; the fastest is {fastest.variant} at "
                f"{fastest.speedup_b32:.2f}x, {robust_change(original, fastest)}."
            )
        lines.append(text.rstrip())
    return lines


def _confirmations(table: PaperTable, result: CheckpointResult, row: Row) -> list[Confirmation]:
    """The confirmations that decide `row`: of the same row (same convs kept exact), on the
    most images (a paired interval narrows with the images; five 1000-image runs of the same
    row have moved by up to a point between attack draws), at least CONFIRM_SAMPLES."""
    same = [c for c in table.confirmations if c.checkpoint == result.name
            and c.variant == row.variant and c.samples >= CONFIRM_SAMPLES
            and sorted(c.kept_exact) == sorted(result.kept_exact)]  # fmt: skip
    most = max((c.samples for c in same), default=0)
    return [c for c in same if c.samples == most]


def _holds(confirmations: list[Confirmation]) -> bool:
    """Every deciding run of confirm_rows.py kept the loss within the target (the worst one
    decides)."""
    return min(c.difference_points for c in confirmations) >= -LOSS_TARGET_POINTS - 1e-9


def _confirmation_text(row: Row, confirmations: list[Confirmation]) -> str:
    worst = min(confirmations, key=lambda c: c.difference_points)
    runs = f"in {len(confirmations)} runs, the worst" if len(confirmations) > 1 else "in one run"
    low, high = worst.ci95_points
    return (
        f"{row.variant} ({row.speedup_b32:.2f}x here) rebuilt and attacked on {worst.samples} "
        f"test images by confirm_rows.py ({runs}: {worst.difference_points:+.1f} points on the "
        f"engine, 95 % interval {low:+.1f} to {high:+.1f}, `benchmarks/results/{worst.file}`)"
        + (": within the target." if _holds(confirmations) else ": outside the target.")
    )


def export_default_verdicts(table: PaperTable) -> list[str]:
    """Per checkpoint and MAC ratio: the row `gdws-export --calib` would ship by default, how
    its candidates did on the held-out images, and that row's speed and accuracy here."""
    lines = []
    for result in table.checkpoints:
        original = result.row("original")
        for chosen in result.export_defaults:
            choice = MeasureChoice.from_dict(chosen["choice"])
            row = result.row(chosen["variant"])
            judged = ", ".join(f"{t.measure} {100 * t.robust:.1f} %" for t in choice.trials)
            lines.append(
                f"{result.name} at MAC ratio {chosen['ratio']:g}: {row.variant} (held-out "
                f"robust: {judged}); here {row.speedup_b32:.2f}x at batch 32, "
                f"{robust_change(original, row)}."
            )
    return lines


def export_default_section(table: PaperTable) -> list[str]:
    """The Markdown lines of `export_default_verdicts` (none for tables without them)."""
    lines = export_default_verdicts(table)
    if not lines:
        return []
    return [
        "What `gdws-export --calib DATA` ships by default (`--sensitivity auto`: each "
        "candidate measure's refit model attacked with PGD-10 on "
        f"{table.settings.get('held_out_samples')} training images after the calibration "
        "ones, the most robust kept):",
        "",
        *(f"- {line}" for line in lines),
        "",
    ]


def confirm_hint(checkpoint: str, variant: str) -> str:
    """' with `<confirm_rows command>`' for the rows confirm_rows.py rebuilds (GDWS on a MAC
    budget), '' for the others."""
    try:
        parse_variant(variant)
    except ValueError:
        return ""
    return f" with `PYTHONPATH=. python benchmarks/confirm_rows.py {checkpoint}:{variant}`"


def sensitivity_verdicts(table: PaperTable) -> list[str]:
    """Per checkpoint and MAC ratio: each measure's robust accuracy against unweighted GDWS
    and L1 pruning at the same ratio. A row that ships the original graph wins nothing: its
    accuracy is the original's because the runtime kept every original conv."""
    lines = []
    for result in table.checkpoints:
        by_macs = [r for r in result.rows if r.budget == "mac"]
        ratios = sorted({r.target_ratio for r in by_macs if r.target_ratio is not None},
                        reverse=True)  # fmt: skip
        for ratio in ratios:
            at = {r.variant.split("@")[0]: r for r in by_macs if r.target_ratio == ratio}
            parts = [f"{k} {_pct(r.robust)} % ({r.speedup_b32:.2f}x"
                     f"{', original shipped' if r.same_as_original else ''})"
                     for k, r in at.items()]  # fmt: skip
            if "gdws-none" not in at:  # refit rows only (paper_table.checkpoint_plan)
                lines.append(f"{result.name} at MAC ratio {ratio:g}: " + "; ".join(parts)
                             + ". No comparison rows at this ratio.")  # fmt: skip
                continue
            rivals = [at[k] for k in ("gdws-none", "l1-prune", "in-prune") if k in at]
            weighted = [k for k in at if k.startswith("gdws-") and k != "gdws-none"
                        and not k.endswith("+refit")]  # fmt: skip
            winners = [k for k in weighted if not at[k].same_as_original
                       and all(at[k].robust > rival.robust for rival in rivals)]  # fmt: skip
            against = ("unweighted GDWS and every pruning baseline"
                       if any(k in at for k in ("l1-prune", "in-prune"))
                       else "unweighted GDWS (no pruning baseline at this ratio)")  # fmt: skip
            verdict = (f"weighted GDWS beating {against}: "
                       + (", ".join(winners) if winners else "none") if weighted
                       else "no weighted GDWS without the refit at this ratio")  # fmt: skip
            refits = [f"{k} {100 * (r.robust - at[k.removesuffix('+refit')].robust):+.1f} points"
                      for k, r in at.items()
                      if k.endswith("+refit") and k.removesuffix("+refit") in at]  # fmt: skip
            if refits:
                verdict += "; 1x1 refit against the same model unrefit: " + ", ".join(refits)
            lines.append(f"{result.name} at MAC ratio {ratio:g}: " + "; ".join(parts)
                         + f". {verdict}.")  # fmt: skip
    return lines


def family(row: Row) -> str:
    """The method a row belongs to: 'gdws-<measure>', 'dws', 'l1-prune', 'in-prune' or
    'original'."""
    return row.variant.split("@")[0]


def matched_speed_verdicts(table: PaperTable) -> list[str]:
    """Per checkpoint and speed-up floor: the best robust accuracy each method reaches among its
    rows at least that fast at batch 32 (rows that ship the original graph left out), and which
    method leads. This is the comparison at matched speed, not matched MACs."""
    lines = []
    for result in table.checkpoints:
        rows = [r for r in result.rows if r.method != "original" and not r.same_as_original]
        for floor in SPEED_FLOORS:
            best: dict[str, Row] = {}
            for row in rows:
                if row.speedup_b32 >= floor and (
                    family(row) not in best or row.robust > best[family(row)].robust
                ):
                    best[family(row)] = row
            if not best:
                lines.append(f"{result.name} at >= {floor:g}x: no approximated model is that fast.")
                continue
            ranked = sorted(best.values(), key=lambda r: -r.robust)
            parts = [f"{family(r)} {_pct(r.robust)} % ({r.variant}, {r.speedup_b32:.2f}x)"
                     for r in ranked]  # fmt: skip
            top = [family(r) for r in ranked if r.robust == ranked[0].robust]
            lines.append(f"{result.name} at >= {floor:g}x: " + "; ".join(parts)
                         + f". Leader: {', '.join(top)}.")  # fmt: skip
    return lines


def markdown(table: PaperTable, plot_name: str | None) -> str:
    s = table.settings
    runtime = runtime_name(table)
    lines = [
        f"# GDWS paper table on {runtime}",
        "",
        f"Command: `{table.command}`",
        "",
        f"Machine: {table.machine.get('summary', '')}. Load average {table.load_before} before, "
        f"{table.load_after} after (2 cores; a load above 2 means other jobs shared them). "
        f"Runtime timed: {runtime}; {thread_text(s)}. Run took "
        f"{table.seconds / 60:.1f} min. Created {table.created}.",
        "",
        f"Robust accuracy: {s.get('attack')} on the first {s.get('samples')} Fashion-MNIST test "
        "images, white-box against each PyTorch model (GDWS layers evaluated as the dense convs "
        "they compute, the same function); `engine robust` replays those adversarial images on "
        f"the {runtime} build. A sample counts as robust when it is right both clean and under "
        "attack. +-SE is the binomial standard error of one row; all rows use the same images "
        "and attack seed, so differences between rows are less noisy than that.",
        "",
        f"Speed: `harness.speed.benchmark`, all graphs of a checkpoint interleaved, batch 1 and "
        f"32, at least {s.get('duration')} s per graph and batch; img/s = batch / median "
        "latency; speed-up = original's median latency / this graph's.",
        "",
        f"Sensitivities on {s.get('calib_samples')} training images (PGD-10, eps "
        f"{s.get('eps')}): none = unweighted (the project default with the 1x1 refit), paper = "
        "noise gains, calibrated = KL-calibrated per-layer scales, relative = per-layer "
        "1/||W||^2 (the project default without the refit), activation = "
        "activation-aware SVD (each channel's SVD in the metric of its input patches on clean "
        "and PGD images, layers traded by relative output error). Budgets: every gdws-<measure> "
        "row spends a MAC budget (`mac_ratio`); gdws-time rows spend a time budget "
        "(`time_ratio`, the primary measure: relative when computed, each conv timed on "
        "ONNX Runtime at batch "
        f"{s.get('auto_batch')} by `measure_layer_costs`), so their ratio is a fraction of the "
        "convs' time. Lowering: " + lowering_text(s),
        "",
        "## The paper's numbers (" + QUOTED_LABEL + ")",
        "",
        "| model (quoted) | robust acc % (quoted) | FPS (quoted) | speed-up (quoted) |",
        "|---|---|---|---|",
        *(f"| {n} | {a} | {f} | {x} |" for n, a, f, x in PAPER_FIGURE_1),
        "",
        "## Verdicts",
        "",
        f"Target: at most {LOSS_TARGET_POINTS} points of robust-accuracy loss with >= "
        f"{SPEEDUP_TARGET:g}x throughput at batch 32 (VGG- and PreActResNet-style checkpoints)."
        + (
            " Where committed `confirm_rows.py` results exist for a row (PGD-100, the same "
            "attack, on 1000 or more test images, paired with the original; each run rebuilt "
            "the row the same way, with the same convs kept exact, though its auto lowering "
            "may have put back other original convs than this run), those on the most images "
            "decide the row's robust loss instead of this table's fewer images, the worst of "
            "them where several ran; a row met here without one is provisional."
            if table.confirmations
            else ""
        )
        + (
            f" Confirmations re-read on {table.confirmations_refreshed} "
            "(`paper_table_report.py`), after the run."
            if table.confirmations_refreshed
            else ""
        ),
        "",
        *(f"- {line}" for line in verdicts(table)),
        "",
        *export_default_section(table),
        "Alpha-weighted GDWS against unweighted GDWS and L1 pruning at the same MAC ratio "
        "(robust %, speed-up at batch 32):",
        "",
        *(f"- {line}" for line in sensitivity_verdicts(table)),
        "",
        "At matched speed instead: the best robust accuracy of each method among its rows at "
        "least this fast at batch 32 (rows that ship the original graph left out):",
        "",
        *(f"- {line}" for line in matched_speed_verdicts(table)),
        "",
        f"Run time: {table.seconds / 60:.1f} min "
        f"({'within' if table.seconds / 60 <= RUNTIME_TARGET_MIN else 'over'} the "
        f"{RUNTIME_TARGET_MIN:g}-minute budget).",
        "",
    ]
    if plot_name:
        lines += [f"![robust accuracy against images/s at batch 32]({plot_name})", ""]
    for result in table.checkpoints:
        lines += [
            f"## {result.name} ({result.arch}, input {tuple(result.input_shape)})",
            "",
            checkpoint_table(result),
            "",
            "Sensitivity computation: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in result.sensitivity_seconds.items())
            + f". Checkpoint total {result.seconds / 60:.1f} min.",
            "",
            "Per-channel spectra of the approximable convs (mean share of a channel's squared "
            "weight in its top-k singular values):",
            "",
            spectra_table(result),
            "",
            *(f"Note: {note}" for note in result.notes),
            "",
        ]
    if table.speed_only:
        lines += speed_only_section(table)
    return "\n".join(lines) + "\n"


def speed_only_section(table: PaperTable) -> list[str]:
    s = table.speed_only_settings
    lines = [
        "## Speed only: full-size CIFAR architectures (3x32x32, synthetic trained-like spectra)",
        "",
        f"Weights: `benchmarks._common.spectral_weights` (decay {s.get('decay')}); speed depends "
        "on the kernel counts only. Unweighted GDWS at each MAC ratio, `auto` lowering timed at "
        f"batch {s.get('auto_batch')} among {s.get('candidates')}; timed interleaved per "
        f"architecture, at least {s.get('iterations')} runs and {s.get('duration_s')} s per "
        "graph and batch.",
        "",
        "| arch | MAC ratio | MACs (ratio) | params | lowering shipped | img/s b1 | img/s b32 "
        "| speed-up b1 / b32 | p90 ms b1 | approx s | export s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.speed_only:
        lines.append(
            f"| {r.arch} | {_ratio(r.mac_ratio) or 'original'} | {r.macs / 1e6:.0f}M "
            f"({r.macs_ratio:.2f}) | {r.params / 1e6:.2f}M | {r.lowering} | {r.fps_b1:.1f} "
            f"| {r.fps_b32:.1f} | {r.speedup_b1:.2f}x / {r.speedup_b32:.2f}x | {r.p90_ms_b1:.1f} "
            f"| {r.approximate_s:.1f} | {r.export_s:.1f} |"
        )
    return [*lines, ""]


STYLE = {
    "original": ("tab:red", "*"),
    "gdws-none": ("tab:gray", "o"),
    "gdws-paper": ("tab:orange", "o"),
    "gdws-calibrated": ("tab:blue", "o"),
    "gdws-relative": ("tab:cyan", "o"),
    "gdws-activation": ("tab:olive", "o"),
    "gdws-none+refit": ("tab:gray", "P"),
    "gdws-relative+refit": ("tab:cyan", "P"),
    "gdws-activation+refit": ("tab:olive", "P"),
    "gdws-calibrated+refit": ("tab:blue", "P"),
    "gdws-paper+refit": ("tab:orange", "P"),
    "gdws-time": ("tab:green", "D"),
    "dws": ("tab:purple", "s"),
    "l1-prune": ("tab:brown", "^"),
    "in-prune": ("tab:pink", "v"),
}


def plot(table: PaperTable, path: Path) -> Path:
    """Robust accuracy against images/s at batch 32, one panel per checkpoint."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = max(len(table.checkpoints), 1)
    figure = Figure(figsize=(5.2 * count, 4.6), dpi=110)
    FigureCanvasAgg(figure)
    for index, result in enumerate(table.checkpoints):
        axes = figure.add_subplot(1, count, index + 1)
        groups: dict[str, list[Row]] = {}
        for row in result.rows:
            groups.setdefault(row.variant.split("@")[0], []).append(row)
        for key, rows in groups.items():
            color, marker = STYLE.get(key, ("black", "x"))
            axes.scatter([r.fps_b32 for r in rows], [100 * r.robust for r in rows], color=color,
                         marker=marker, s=160 if key == "original" else 36, label=key,
                         zorder=4 if key == "original" else 3)  # fmt: skip
        original = result.row("original")
        axes.axhline(100 * original.robust, color="tab:red", linewidth=0.8, linestyle=":")
        axes.axvline(original.fps_b32, color="tab:red", linewidth=0.8, linestyle=":")
        front = sorted((r for r in result.rows if r.pareto), key=lambda r: r.fps_b32)
        axes.plot([r.fps_b32 for r in front], [100 * r.robust for r in front], color="tab:green",
                  linewidth=1.2, marker="o", markerfacecolor="none", markersize=11,
                  label="Pareto front", zorder=2)  # fmt: skip
        for row in result.rows:
            if row.target_ratio is not None:
                axes.annotate(f"{row.target_ratio:g}", (row.fps_b32, 100 * row.robust),
                              textcoords="offset points", xytext=(4, 3), fontsize=6)  # fmt: skip
        axes.set_xlabel(f"images/s, batch 32, {runtime_name(table)}")
        axes.set_ylabel("robust accuracy (%)")
        axes.set_title(f"{result.name}\n{result.attack}", fontsize=7)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=6, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def lowering_text(s: dict) -> str:
    """How the table's models became engines, from its settings."""
    if s.get("target") == "torch":
        return "none: each PyTorch model runs as a torch.export program, GDWS layers included."
    lowering = s.get("lowering") or ("auto" if s.get("target", "ort") == "ort" else "gather")
    if lowering != "auto":
        return f"`export_onnx(lowering='{lowering}')` for every GDWS layer."
    return (
        f"`export_onnx(lowering='auto', original=...)` timed on ONNX Runtime CPU at batch "
        f"{s.get('auto_batch')} among {s.get('candidates')}; layers where the original conv is "
        "faster ship it, and the PyTorch model attacked keeps them too. A row marked "
        "`(= original)` ships no GDWS layer at all, so its accuracy is the original's."
    )


def thread_text(settings: dict) -> str:
    """The thread counts of a run; before --torch-threads one count set both."""
    threads, torch_threads = settings.get("threads"), settings.get("torch_threads")
    if torch_threads is None:
        return f"ONNX Runtime and PyTorch {threads} CPU thread(s)"
    return (f"ONNX Runtime {threads} intra-op thread(s) per session, PyTorch (attacks, "
            f"sensitivities) {torch_threads}")  # fmt: skip


def runtime_name(table: PaperTable) -> str:
    """The runtime the table timed ("ONNX Runtime CPU" for tables written before --target)."""
    return table.settings.get("runtime", "ONNX Runtime CPU")


def load(path: Path) -> PaperTable:
    return PaperTable.from_dict(json.loads(Path(path).read_text()))


def refresh_confirmations(path: Path, folder: Path = RESULTS) -> dict[str, Path]:
    """Re-write the table at `path` (its .json, .md and .png) with the confirm_rows.py results
    now in `folder`: what was measured stays as it was, only the verdicts' confirmations
    change, and the Markdown says when they were re-read."""
    table = load(path)
    settings = table.settings
    table.confirmations = confirmations_for(
        settings.get("target", "ort"), settings["attack"], folder
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    table.confirmations_refreshed = now.isoformat(timespec="seconds")
    return write_results(table, Path(path).with_suffix(""))


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=refresh_confirmations.__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="a paper table's .json")
    path = parser.parse_args(argv).table
    try:
        return refresh_confirmations(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, not JSON, not a table
        raise SystemExit(f"paper_table_report.py: {path}: {exc}") from None


if __name__ == "__main__":
    main()
