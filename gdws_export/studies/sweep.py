"""Sweeps: one `gdws-export` export per budget of one method (`--method`, GDWS by default),
benchmarked and attacked together.

`sweep` loads the model once and, for the original and then each budget of the SweepConfig,
runs the pipeline's own export stages (`pipeline.run.plan_export` and `pipeline.ship.ship`:
the same alphas, sensitivity choice, approximation, 1x1 refit, exporter, lowering, build and
checks as `gdws-export MODEL --mac-ratio R ...` with the same ExportConfig), each into its
own folder under `work_dir`. Then it times every engine in one interleaved benchmark (the
original is the reference), evaluates clean and robust accuracy of what ships (the PyTorch
twin of each engine, attacked, and the attack replayed on the engine), and returns a
SweepReport: one table row per budget, the Pareto-optimal ones (robust accuracy against
images/s), and the reports behind the table.

So a sweep row and `gdws-export` with that row's budget ship the same engine; the sweep only
shares what does not depend on the budget (the loaded model, the calibration data, the
alphas, the layer timings of `--time-ratio`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.harness.accuracy import evaluate_accuracy
from gdws_export.harness.speed import benchmark
from gdws_export.harness.sweep_report import (
    SweepConfig,
    SweepReport,
    SweepRow,
    SweepSetting,
    pareto_front,
)
from gdws_export.pipeline.config import ExportConfig
from gdws_export.pipeline.report import ExportReport
from gdws_export.pipeline.run import load_for_export, plan_export
from gdws_export.pipeline.ship import ship
from gdws_export.pipeline.stages import Clock, ExportState, ProgressCallback
from gdws_export.runtimes.build import open_runner

ORIGINAL = "original"


@dataclass
class _Shipped:
    """One export of the sweep: its folder, report and what ships in PyTorch."""

    folder: Path
    report: ExportReport
    model: nn.Module

    def runner(self, target: str):
        files = self.report.files
        return open_runner(target, self.folder / files["engine"],
                           self.folder / files["engine_settings"])  # fmt: skip


def sweep(
    export: ExportConfig,
    config: SweepConfig,
    data: tuple[torch.Tensor, torch.Tensor] | Callable[[tuple[int, ...], int], tuple],
    *,
    work_dir: str | os.PathLike,
    data_name: str = "",
    progress: ProgressCallback | None = None,
) -> SweepReport:
    """Export the model at every budget of `config` as `gdws-export` does, and measure them.

    Args:
        export: how every model is built and shipped (model file, calibration data,
            sensitivity, refit, exclude, target, precision, lowering, exporter, threads,
            batch...); its own budget fields are ignored, each setting sets one.
        config: the budgets swept and how speed and accuracy are measured.
        data: (x, y) evaluation images in [0, 1] and labels (not the calibration data), or
            a function of the model's (C, H, W) and class count that reads them.
        work_dir: one folder per export is written here (`original/`, `mac_ratio_0.5/`...),
            each as `gdws-export -o` writes it (report.json included).
        data_name: description of the data for the report.
        progress: called as each export stage starts and ends (see `ProgressCallback`).

    Returns:
        A SweepReport; write it with `gdws_export.harness.report.write_sweep`.

    Example:
        >>> config = SweepConfig(parse_settings(mac_ratios=[0.25, 0.5]))
        >>> report = sweep(ExportConfig("model.pt", calib="calib.npz"), config, (x, y),
        ...                work_dir="out")  # doctest: +SKIP
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    # Every export's config is resolved as the CLI resolves `gdws-export --mac-ratio R ...`,
    # before any work, so a bad one fails first; the first setting's loads the model and data
    # every export shares.
    configs = {
        ORIGINAL if s is None else s.label: _setting_config(export, s, work_dir)
        for s in (None, *config.settings)
    }
    base = configs[config.settings[0].label]
    torch.manual_seed(base.seed)
    clock = Clock(progress)
    loaded_report, state = load_for_export(base, clock)
    if state.loaded.fixed_batch is not None:
        raise UnsupportedModelError(
            f"{base.model} fixes the batch size to {state.loaded.fixed_batch}; the sweep runs "
            "batches of several sizes: export it again with a dynamic batch"
        )
    if callable(data):
        data = data(state.shape, loaded_report.model["classes"])
    _check_data(data, state.shape)
    work_dir.mkdir(parents=True, exist_ok=True)  # only now: bad input has failed by here
    shipped: dict[str, _Shipped] = {}
    for label, cfg in configs.items():
        cfg.alpha_eps = base.alpha_eps  # as loading filled it in (the checkpoint's eps)
        state = state.for_another_export()  # shares alphas and layer costs with the last
        shipped[label] = _export_one(cfg, state, loaded_report, clock)
    speed, accuracy = _measure(shipped, config, data, base.target, state.shape, data_name)
    settings = base.to_dict()
    for key in ("beta", "mac_ratio", "time_ratio", "output", "notes"):
        settings.pop(key, None)
    return SweepReport(
        model={"name": Path(base.model).name, "input_shape": list(state.shape)},
        data=data_name,
        config=config,
        robust_attack=(config.attacks[0] if config.attacks else config.square).describe(),
        rows=_rows(shipped, config, speed, accuracy),
        speed=speed,
        accuracy=accuracy,
        approximations={
            name: _approximation(s.report) for name, s in shipped.items() if name != ORIGINAL
        },
        notes=[f"{name}: {w}" for name, s in shipped.items() for w in s.report.warnings],
        seconds=round(time.perf_counter() - start, 3),
        export=settings,
    )


def _measure(shipped: dict[str, _Shipped], config: SweepConfig, data, target: str, shape,
             data_name: str):  # fmt: skip
    """Every engine timed in one interleaved benchmark (the original the reference), and
    each export's PyTorch twin attacked, the attack replayed on its engine."""
    speed = benchmark(
        {name: s.runner(target) for name, s in shipped.items()},
        batch_sizes=config.batch_sizes, duration_s=config.duration_s,
        iterations=config.iterations, warmup_s=config.warmup_s, reference=ORIGINAL,
        input_shape=shape,
    )  # fmt: skip
    x, y = data
    accuracy = evaluate_accuracy(
        {name: s.model for name, s in shipped.items()}, x, y, attacks=config.attacks,
        engines={name: s.runner(target) for name, s in shipped.items()},
        square=config.square, batch_size=config.eval_batch_size, data=data_name,
    )  # fmt: skip
    return speed, accuracy


def _setting_config(
    export: ExportConfig, setting: SweepSetting | None, work_dir: Path
) -> ExportConfig:
    """The resolved config of one export: `gdws-export --no-gdws` for the original (setting
    None), else `export` at the setting's budget; output into its folder under `work_dir`."""
    folder = os.fspath(work_dir / (ORIGINAL if setting is None else setting.file_stem))
    if setting is None:
        return replace(export, gdws=False, method="gdws", beta=None, mac_ratio=None,
                       time_ratio=None,
                       exclude=(), alphas=None, max_layer_error=None, refit=None,
                       sensitivity=None, output=folder).resolved()  # fmt: skip
    return replace(export, gdws=True, beta=setting.beta, mac_ratio=setting.mac_ratio,
                   time_ratio=setting.time_ratio, output=folder).resolved()  # fmt: skip


def _export_one(
    cfg: ExportConfig, state: ExportState, loaded_report: ExportReport, clock: Clock
) -> _Shipped:
    """One export, planned and shipped by the pipeline into `cfg.output`, its report.json
    written beside what it ships."""
    folder = Path(cfg.output)
    folder.mkdir(exist_ok=True)
    report = copy.deepcopy(loaded_report)
    report.settings = cfg.to_dict()
    plan_export(cfg, state, report, clock, show_bars=False)
    ship(cfg, report, state, folder, clock)
    report.output_dir = os.fspath(folder)
    report.files["report_json"] = "report.json"
    (folder / "report.json").write_text(report.to_json() + "\n")
    return _Shipped(folder, report, state.shipped_model.eval())


def _approximation(report: ExportReport) -> dict:
    """What one export built: its approximation, and the sensitivity choice and 1x1 refit
    behind it (the export's report.json in the setting's folder has everything)."""
    return {
        **(report.approximation or {}),
        "alphas": report.model.get("alphas"),
        "sensitivity_choice": report.sensitivity_choice,
        "refit": report.refit,
        "original_ships": report.original_ships,
    }


def _rows(shipped: dict[str, _Shipped], config: SweepConfig, speed, accuracy) -> list[SweepRow]:
    settings = {s.label: s for s in config.settings}
    reference_fps = speed.offline(ORIGINAL).images_per_s
    rows = []
    for name, one in shipped.items():
        model_accuracy = accuracy.model(name)
        first = model_accuracy.attacks[0]
        offline = speed.offline(name)
        setting = settings.get(name)
        report = one.report
        approximation = report.approximation or {}
        rows.append(
            SweepRow(
                setting=name,
                beta=setting.beta if setting else None,
                mac_ratio=setting.mac_ratio if setting else None,
                time_ratio=setting.time_ratio if setting else None,
                macs=report.macs.get("shipped", report.macs.get("gdws", report.macs["original"])),
                params=report.params.get(
                    "shipped", report.params.get("gdws", report.params["original"])
                ),
                fps=offline.images_per_s,
                fps_ratio=offline.images_per_s / reference_fps,
                p90_latency_ms=speed.single_stream(name).latency.p90_ms,
                clean_accuracy=model_accuracy.clean_accuracy,
                robust_accuracy=first.robust_accuracy,
                engine_clean_accuracy=model_accuracy.engine_clean_accuracy,
                engine_robust_accuracy=(
                    first.engine_accuracy if first.target == "pytorch" else first.robust_accuracy
                ),
                conv_mac_ratio=approximation.get("achieved_mac_ratio", 1.0),
                onnx_path=os.fspath(one.folder / report.files.get("gdws_onnx", "original.onnx")),
                engine_path=os.fspath(one.folder / report.files["engine"]),
            )
        )
    on_front = pareto_front([(r.fps, r.robust_accuracy) for r in rows])
    for row, pareto in zip(rows, on_front, strict=True):
        row.pareto = pareto
    return rows


def _check_data(data: tuple[torch.Tensor, torch.Tensor], shape: tuple[int, ...]) -> None:
    x = data[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidInputError("sweep: the dataset is empty or not (N, C, H, W) images")
    if tuple(x.shape[1:]) != tuple(shape):
        raise InvalidInputError(
            f"sweep: the data are images {tuple(x.shape[1:])} but the model takes "
            f"{tuple(shape)} (C, H, W)"
        )
