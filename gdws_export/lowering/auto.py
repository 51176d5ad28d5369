"""`auto` lowering: time every form of every GDWS layer on the target runtime, keep the fastest.

Each candidate runs as a small ONNX graph on ONNX Runtime (`OrtRunner`, the export's thread
count and batch), between two 1x1 depthwise "anchor" convs. The anchors put the candidate in
the surroundings it has inside the network: ONNX Runtime's CPU convs run in a blocked channel
layout (NCHWc), and a form that leaves it (a Gather does) pays for converting the tensor out
and back, exactly as it would between two convs of the model. Graphs are timed in interleaved
rounds (each round runs every candidate once, so load from other processes hits all alike),
and each candidate's fastest round decides: load only ever adds time, and a burst over most
of one candidate's few rounds moves its median, not its fastest round.

The original conv is always a candidate ("dense"): a layer whose GDWS forms are not faster by
`SPEED_MARGIN` keeps it (timings of one graph differ by a few percent from round to round,
and the fastest of several candidates is biased towards a lucky draw: GDWS engines chosen by
a bare minimum measured 0.67x to 0.92x of the original afterwards). A fold form also changes
the producing layer, so its time is the consumer's time plus what the widened producer costs
over the plain one. Layers are decided from the last to the first, so a producer is timed
with the output width its consumer's choice gave it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.lowering.fold import FoldSite, expand_outputs
from gdws_export.lowering.forms import (
    fold_slots,
    fold_source_index,
    kernel_table,
    lower_layer,
)
from gdws_export.lowering.timing import record_shapes, time_interleaved, timing_graph

# Left out by default, to keep `auto` quick: "uniform" (ONNX Runtime runs a depthwise conv with
# channel multiplier > 1 in its slow generic kernel, not in NCHWc; it never beat "gather" or
# "slots" in our measurements) and "fold-3" and up (rarely better than fold-2 or slots).
DEFAULT_CANDIDATES = ("dense", "gather", "slots", "fold", "fold-2")
# A GDWS form (or whole GDWS graph) replaces the original conv (graph) only when at least this
# fraction faster than it in the same interleaved rounds.
SPEED_MARGIN = 0.05


@dataclass
class LayerTiming:
    """Timings of one layer's candidates (milliseconds per batch) and the one kept.

    Attributes:
        form: the candidate kept: the fastest by `fastest_ms`, a GDWS form only when
            faster than "dense" by `SPEED_MARGIN`.
        median_ms / p90_ms / fastest_ms: per candidate; a fold candidate's figure includes
            the extra time of its widened producer.
        notes: why some candidates were not timed.
    """

    form: str
    median_ms: dict[str, float]
    p90_ms: dict[str, float]
    notes: list[str] = field(default_factory=list)
    fastest_ms: dict[str, float] = field(default_factory=dict)


def choose_forms(
    model: nn.Module,
    example: torch.Tensor,
    *,
    sites: dict[str, FoldSite],
    originals: dict[str, nn.Conv2d] | None = None,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    align: int = 8,
    batch: int = 1,
    threads: int | None = None,
    repeats: int = 7,
) -> dict[str, LayerTiming]:
    """Pick the fastest lowering form of every GDWS conv of `model` on ONNX Runtime.

    Args:
        model: the GDWS model (left unchanged).
        example: one input batch (for layer shapes).
        sites: fold sites (`find_fold_sites`); fold candidates are timed only where one exists.
        originals: original convs by layer name, timed (and shipped) as "dense".
        candidates: forms to time; "dense" should stay in, so no layer gets slower.
        align: channel alignment of the forms (see `forms.pad_kernels`).
        batch, threads: as the deployed graph will run.
        repeats: interleaved timing rounds per layer.

    Returns:
        layer name -> LayerTiming, for every GDWS conv.
    """
    layers = {n: copy.deepcopy(m) for n, m in model.named_modules() if isinstance(m, GDWSConv2d)}
    originals = {k: copy.deepcopy(v) for k, v in (originals or {}).items()}
    producers = {s.producer for s in sites.values()}
    shapes = record_shapes(model, example[:1], set(layers) | producers)
    order = [n for n in shapes if n in layers]
    choices: dict[str, LayerTiming] = {}
    for name in reversed(order):
        gdws = layers[name]
        graphs, notes, totals = {}, [], {}
        in_shape = (batch, *shapes[name][0][1:])
        for form in candidates:
            slots = fold_slots(form)
            if slots is not None:
                note = _fold_note(name, sites, slots, gdws)
                if note:
                    notes.append(note)
                    continue
                consumer = lower_layer(gdws, form, align=align)
                width = consumer.source_index.numel()
                graphs[form] = timing_graph(consumer, (batch, width, *in_shape[2:]), threads)
                _add_producer_graphs(graphs, sites[name], layers, model, consumer.source_index,
                                     form, shapes, align, batch, threads)  # fmt: skip
                totals[form] = [(form, 1), (f"{form}:producer", 1), ("producer", -1)]
            else:
                module = lower_layer(gdws, form, original=originals.get(name), align=align)
                graphs[form] = timing_graph(module, in_shape, threads)
                totals[form] = [(form, 1)]
        time_interleaved(graphs, repeats)
        median, p90, fastest = {}, {}, {}
        for form, terms in totals.items():  # folds: consumer + widened - plain producer
            median[form] = sum(sign * graphs[k].percentile_ms(50) for k, sign in terms)
            p90[form] = sum(sign * graphs[k].percentile_ms(90) for k, sign in terms)
            fastest[form] = sum(sign * graphs[k].fastest_ms() for k, sign in terms)
        best = fastest_form(fastest)
        choices[name] = LayerTiming(best, median, p90, notes, fastest)
        if fold_slots(best) is not None:  # the producer, decided later, now has more outputs
            site = sites[name]
            index = fold_source_index(gdws, fold_slots(best), align)
            if site.producer in layers:
                layers[site.producer] = expand_outputs(layers[site.producer], index)
            if site.producer in originals:
                originals[site.producer] = expand_outputs(originals[site.producer], index)
        for g in graphs.values():
            g.runner.deactivate()
    for name in layers.keys() - set(order):
        choices[name] = LayerTiming("gather", {}, {}, ["not called in the forward; not timed"])
    return choices


def fastest_form(milliseconds: dict[str, float]) -> str:
    """The candidate (a form, or a whole-model plan) with the least time, where one other than
    the original conv ("dense") wins only when faster than it by `SPEED_MARGIN`."""
    best = min(milliseconds, key=lambda f: (milliseconds[f], f != "dense"))
    if best == "dense" or "dense" not in milliseconds:
        return best
    return best if beats_original(milliseconds[best], milliseconds["dense"]) else "dense"


def beats_original(milliseconds: float, original_ms: float) -> bool:
    """Whether a GDWS form or graph is faster than the original by `SPEED_MARGIN`."""
    return milliseconds < (1 - SPEED_MARGIN) * original_ms


def _fold_note(name: str, sites: dict, slots: int, gdws: GDWSConv2d) -> str:
    if name not in sites:
        return f"fold-{slots}: no fold site"
    if slots > 1 and slots >= kernel_table(gdws).max_slots:
        return f"fold-{slots}: not more than fold-{slots - 1}'s layout needs"
    return ""


def _add_producer_graphs(graphs, site, layers, model, index, form, shapes, align, batch, threads):
    """Add timing graphs of the producer widened by `index` and the plain one (shared)."""
    producer = layers.get(site.producer)
    if producer is None:
        producer = model.get_submodule(site.producer)
    in_shape = (batch, *shapes[site.producer][0][1:])

    def as_shipped(module):
        if isinstance(module, GDWSConv2d):  # the reference form stands in for its own choice
            return lower_layer(module, "gather", align=align)
        return module

    widened = as_shipped(expand_outputs(producer, index))
    graphs[f"{form}:producer"] = timing_graph(widened, in_shape, threads)
    if "producer" not in graphs:
        graphs["producer"] = timing_graph(as_shipped(producer), in_shape, threads)


__all__ = [
    "DEFAULT_CANDIDATES",
    "SPEED_MARGIN",
    "LayerTiming",
    "beats_original",
    "choose_forms",
    "fastest_form",
]
