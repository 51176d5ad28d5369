"""The harness layer: data, speed benchmarks, accuracy evaluation, reports and sweeps.

Speed and robustness are measured on the runtime that will serve the model:

- `benchmark(runners, ...)` -> SpeedReport: latency percentiles and images/s per batch size,
  runners interleaved (speed.py); `machine_info()` records the machine (machine.py);
- `evaluate_accuracy(models, x, y, ...)` -> AccuracyReport: clean and white-box robust
  accuracy on PyTorch, replayed on the engines, and the Square Attack through the engines
  (accuracy.py); `attack_copy(model)`: the same function, faster to attack in PyTorch
  (GDWS convs as dense ones, BatchNorms folded; attack_copy.py);
- `quantized_robustness(engine, twin, x, y)` -> AccuracyReport: an INT8 engine attacked three
  ways (PGD on its fake-quantized twin, replayed on it, Square on it), the per-image worst case
  the headline (quantized.py); `autoattack_accuracy(model, x, y, eps)`: AutoAttack, an optional
  package (autoattack.py);
- `choose_measure(models, x, y, attack)` -> MeasureChoice: the candidate GDWS model most
  robust on held-out images (`--sensitivity auto`, measure_choice.py);
- SweepConfig / SweepReport: a sweep's settings and results (sweep_report.py; the procedure,
  which exports through the pipeline, is `gdws_export.studies.sweep`);
- `write_json` / `read_json` / `write_markdown` / `write_sweep`: report files with a versioned
  schema, written atomically (report.py, docs/report-schema.md); `plot_sweep` (plots.py).

Nothing here imports onnx, onnxruntime, tensorrt or matplotlib at import time.
"""

from gdws_export.harness.accuracy import (
    AccuracyReport,
    AttackResult,
    ModelAccuracy,
    SquareConfig,
    evaluate_accuracy,
)
from gdws_export.harness.attack_copy import attack_copy
from gdws_export.harness.autoattack import autoattack_accuracy
from gdws_export.harness.data import load_dataset
from gdws_export.harness.machine import MachineInfo, machine_info
from gdws_export.harness.plots import plot_sweep
from gdws_export.harness.quantized import quantized_robustness
from gdws_export.harness.report import (
    SCHEMA_VERSION,
    read_json,
    render_markdown,
    write_json,
    write_markdown,
    write_sweep,
)
from gdws_export.harness.runners import load_runner
from gdws_export.harness.speed import benchmark
from gdws_export.harness.speed_report import BatchResult, BenchOptions, LatencyStats, SpeedReport
from gdws_export.harness.sweep_report import (
    SweepConfig,
    SweepReport,
    SweepRow,
    SweepSetting,
    pareto_front,
    parse_settings,
)

__all__ = [
    "SCHEMA_VERSION",
    "AccuracyReport",
    "AttackResult",
    "BatchResult",
    "BenchOptions",
    "LatencyStats",
    "MachineInfo",
    "ModelAccuracy",
    "SpeedReport",
    "SquareConfig",
    "SweepConfig",
    "SweepReport",
    "SweepRow",
    "SweepSetting",
    "attack_copy",
    "autoattack_accuracy",
    "benchmark",
    "evaluate_accuracy",
    "load_dataset",
    "load_runner",
    "machine_info",
    "parse_settings",
    "pareto_front",
    "plot_sweep",
    "quantized_robustness",
    "read_json",
    "render_markdown",
    "write_json",
    "write_markdown",
    "write_sweep",
]
