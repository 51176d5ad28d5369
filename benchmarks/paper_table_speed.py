"""The speed-only part of the paper table: full-size CIFAR architectures (3x32x32, width 64) with
trained-like synthetic spectra, GDWS at several MAC ratios, ONNX Runtime CPU.

Speed depends on the shapes and kernel counts only, so no trained weights are needed; the
weights come from `benchmarks._common.spectral_weights` (as in `lowering_speed.py`). For each
architecture the original and the GDWS graphs (unweighted `approximate(mac_ratio=r)`, `auto`
lowering with the original convs as candidates) are timed in one interleaved benchmark.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from benchmarks._common import forms_summary, spectral_weights
from benchmarks.paper_table_report import SpeedOnlyRow
from gdws_export import approximate, create_model
from gdws_export.gdws.selection import count_macs, replace_module
from gdws_export.harness.speed import benchmark
from gdws_export.lowering import export_onnx
from gdws_export.runtimes.build import build
from gdws_export.runtimes.onnxruntime import OrtRunner

SHAPE = (3, 32, 32)
DECAY = 0.6
BATCHES = (1, 32)


def speed_only_table(
    archs, ratios, *, threads: int, iterations: int, candidates: tuple[str, ...],
    repeats: int, auto_batch: int, workdir: Path, duration_s: float = 0.5, seed: int = 0,
) -> tuple[list[SpeedOnlyRow], dict]:  # fmt: skip
    """Rows (the original first, then each ratio) for every architecture, and the settings."""
    rows: list[SpeedOnlyRow] = []
    images = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(seed))
    for arch in archs:
        torch.manual_seed(seed)
        base = spectral_weights(create_model(arch), DECAY, seed)
        models = {"original": (base, None, 0.0)}
        for ratio in ratios:
            start = time.perf_counter()
            gdws, _ = approximate(base, mac_ratio=ratio, input_shape=SHAPE)
            models[f"r{ratio:g}"] = (gdws.eval(), ratio, time.perf_counter() - start)
        files, exports, lowering = {}, {}, {}
        for key, (model, ratio, _) in models.items():
            start = time.perf_counter()
            result = export_onnx(
                model, input_shape=SHAPE, path=workdir / f"{arch}-{key}.onnx", exporter="legacy",
                parity_inputs=images, threads=threads, batch=auto_batch, candidates=candidates,
                repeats=repeats, original=base if ratio is not None else None,
            )  # fmt: skip
            built = build(result.onnx_path, target="ort", threads=threads)
            exports[key], files[key] = time.perf_counter() - start, built.settings_path
            for layer in (lay.name for lay in result.layers if lay.form == "dense"):
                replace_module(model, layer, copy.deepcopy(base.get_submodule(layer)))
            lowering[key] = forms_summary(result.forms) if ratio else "original"
            print(f"  {arch} {key}: export+build {exports[key]:.1f} s, {lowering[key]}", flush=True)
        speed = benchmark(
            {key: OrtRunner.from_settings(path) for key, path in files.items()},
            batch_sizes=BATCHES, duration_s=duration_s, iterations=iterations, warmup_s=0.0,
            reference="original", input_shape=SHAPE,
        )  # fmt: skip
        reference_macs = count_macs(base, SHAPE)
        for key, (model, ratio, approx_s) in models.items():
            b1, b32 = speed.result(key, 1), speed.result(key, 32)
            macs = count_macs(model, SHAPE)
            rows.append(
                SpeedOnlyRow(
                    arch=arch, mac_ratio=ratio, macs=macs, macs_ratio=macs / reference_macs,
                    params=sum(p.numel() for p in model.parameters()), lowering=lowering[key],
                    fps_b1=1e3 / b1.latency.median_ms, fps_b32=32e3 / b32.latency.median_ms,
                    speedup_b1=speed.speedup(key, 1), speedup_b32=speed.speedup(key, 32),
                    p90_ms_b1=b1.latency.p90_ms, approximate_s=approx_s, export_s=exports[key],
                )
            )  # fmt: skip
        print(f"  {arch}: timed", flush=True)
    settings = {"decay": DECAY, "auto_batch": auto_batch, "candidates": list(candidates),
                "iterations": iterations, "duration_s": duration_s, "threads": threads,
                "repeats": repeats, "ratios": list(ratios), "archs": list(archs)}  # fmt: skip
    return rows, settings
