"""The speed / robustness trade-off plot of a sweep (PNG, matplotlib, imported lazily).

The figure is drawn on matplotlib's Agg canvas directly, without pyplot, so it neither needs a
display nor changes the caller's matplotlib backend or global state.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gdws_export._files import atomic_write_bytes
from gdws_export._optional import require

if TYPE_CHECKING:
    from gdws_export.harness.sweep_report import SweepReport


def plot_sweep(report: SweepReport, path: str | os.PathLike) -> Path:
    """Plot robust accuracy against images/s, the original as reference, the Pareto front drawn.

    Args:
        report: a SweepReport.
        path: the PNG file to write (atomically).

    Returns:
        The path written.

    Example:
        >>> plot_sweep(report, "out/sweep.png")  # doctest: +SKIP
    """
    figure, axes = _new_figure()
    original = [row for row in report.rows if row.setting == "original"]
    settings = [row for row in report.rows if row not in original]
    if settings:
        axes.scatter(
            [r.fps for r in settings],
            [100 * r.robust_accuracy for r in settings],
            color="tab:blue",
            label="GDWS settings",
            zorder=3,
        )
    for row in original:
        axes.scatter(
            [row.fps], [100 * row.robust_accuracy], marker="*", s=220, color="tab:red",
            label="original (reference)", zorder=4,
        )  # fmt: skip
        axes.axhline(100 * row.robust_accuracy, color="tab:red", linewidth=0.8, linestyle=":")
        axes.axvline(row.fps, color="tab:red", linewidth=0.8, linestyle=":")
    front = sorted((r for r in report.rows if r.pareto), key=lambda r: r.fps)
    if front:
        axes.plot(
            [r.fps for r in front],
            [100 * r.robust_accuracy for r in front],
            color="tab:green",
            linewidth=1.5,
            marker="o",
            markerfacecolor="none",
            markersize=11,
            label="Pareto front",
            zorder=2,
        )
    for row in report.rows:
        axes.annotate(
            f"{row.setting} ({row.fps_ratio:.2f}x)",
            (row.fps, 100 * row.robust_accuracy),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=7,
        )
    batch = max(report.config.batch_sizes)
    axes.set_xlabel(f"images/s, batch {batch}, {report.target} {report.precision}")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_title(f"{report.model.get('name', 'model')}: {report.robust_attack}", fontsize=8)
    return _finish(figure, axes, path)


def plot_operating_point(search: dict, path: str | os.PathLike) -> Path:
    """Plot the operating-point search: each probe's robust-accuracy drop on the held-out
    images (95 % interval as error bars) against its MAC ratio, the budget line, the probe
    shipped circled.

    Args:
        search: the export report's `search` field (`SearchResult.to_dict()`).
        path: the PNG file to write (atomically).

    Returns:
        The path written.
    """
    figure, axes = _new_figure()
    from matplotlib.ticker import FormatStrFormatter

    original = search.get("original_macs") or 0

    def share(p: dict) -> float:  # the model's MACs against the original's
        return p["macs"] / original if original else p["mac_ratio"]

    def group(p: dict) -> str:
        exact = p.get("exact") or []
        return f"{p['measure']} alphas" + (f", {', '.join(exact)} exact" if exact else "")

    probes = sorted(search["probes"], key=share)
    for label in dict.fromkeys(group(p) for p in probes):
        mine = [p for p in probes if group(p) == label]
        drops = [p["drop_points"] for p in mine]
        errors = [[d - p["interval"][0] for d, p in zip(drops, mine, strict=True)],
                  [p["interval"][1] - d for d, p in zip(drops, mine, strict=True)]]  # fmt: skip
        axes.errorbar([share(p) for p in mine], drops, yerr=errors, fmt="o", capsize=3,
                      label=label, zorder=3)  # fmt: skip
        for p in mine:
            if p.get("speedup"):
                axes.annotate(f"{p['speedup']:.2f}x", (share(p), p["drop_points"]),
                              textcoords="offset points", xytext=(6, 4), fontsize=7)  # fmt: skip
    if search.get("max_robust_drop") is not None:
        axes.axhline(search["max_robust_drop"], color="tab:red", linewidth=0.8, linestyle=":",
                     label=f"budget ({search['max_robust_drop']:g} points)")  # fmt: skip
    if search.get("chosen") is not None:
        shipped = search["probes"][search["chosen"]]
        axes.scatter([share(shipped)], [shipped["drop_points"]], s=260, facecolors="none",
                     edgecolors="tab:green", linewidths=1.5, label="shipped", zorder=4)  # fmt: skip
    axes.axhline(0, color="grey", linewidth=0.6)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axes.set_xlabel(
        "MACs of the model / the original's (log scale)"
        if original
        else "MAC ratio of the replaceable convs (log scale)"
    )
    axes.set_ylabel("robust-accuracy drop vs the original (points)")
    axes.set_title(f"{search['held_out']} held-out images, {search['attack']}", fontsize=8)
    return _finish(figure, axes, path)


def _new_figure():
    """A figure on the Agg canvas (no pyplot, no display) and its one axes."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _finish(figure, axes, path: str | os.PathLike) -> Path:
    """Grid, legend and layout; the PNG written to `path` atomically."""
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
