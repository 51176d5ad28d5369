"""Report files: the JSON envelope and round trip, Markdown, the plot, and atomic writes."""

from __future__ import annotations

import json

import pytest

from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import AccuracyReport, AttackResult, ModelAccuracy
from gdws_export.harness.machine import GpuInfo, JetsonInfo, MachineInfo
from gdws_export.harness.plots import plot_sweep
from gdws_export.harness.report import (
    SCHEMA_VERSION,
    from_document,
    read_json,
    render_markdown,
    to_document,
    write_json,
    write_markdown,
)
from gdws_export.harness.speed_report import BatchResult, BenchSettings, LatencyStats, SpeedReport
from gdws_export.harness.sweep_report import SweepConfig, SweepReport, SweepRow, parse_settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def speed_report() -> SpeedReport:
    machine = MachineInfo(
        os="Linux", python="3.11", cpu_model="ARMv8", cpu_threads=8, usable_threads=8,
        packages={"torch": "2.13"}, gpus=[GpuInfo(name="Orin", driver="540", tensorrt="10.3")],
        jetson=JetsonInfo(l4t_release="R36", power_mode="MAXN", clocks=""),
    )  # fmt: skip
    stats = LatencyStats.from_samples([1.0, 1.5, 2.0, 4.0])
    results = [
        BatchResult("original", 1, 4, 0.0085, stats, 1e3 / stats.mean_ms, True, stats, 500.0),
        BatchResult("beta=0.01", 1, 4, 0.0085, stats, 1e3 / stats.mean_ms, False),
    ]
    settings = BenchSettings(batch_sizes=[1], input_shape=[3, 32, 32], reference="original")
    return SpeedReport(settings, machine, {"original": {"runtime": "tensorrt"}}, results)


def accuracy_report() -> AccuracyReport:
    attack = AttackResult(
        attack="pgd", description="PGD-10 (L-inf, eps=8/255, ...)", norm="linf", eps=8 / 255,
        steps=10, samples=100, target="pytorch", robust_accuracy=0.4, max_perturbation=8 / 255,
        config={"name": "pgd"}, engine_accuracy=0.41, transfer_gap_points=1.0, agreement=0.98,
    )  # fmt: skip
    model = ModelAccuracy("original", 100, 0.8, 0.8, {"runtime": "onnxruntime"}, [attack])
    return AccuracyReport("cifar10 (test)", 100, 64, [model])


def sweep_report() -> SweepReport:
    rows = [
        SweepRow("original", None, None, 1000, 100, 50.0, 1.0, 20.0, 0.8, 0.5, 0.8, 0.5),
        SweepRow("beta=0.01", 0.01, None, 600, 80, 80.0, 1.6, 12.0, 0.79, 0.49, 0.79, 0.49),
        SweepRow("beta=0.1", 0.1, None, 400, 60, 70.0, 1.4, 14.0, 0.7, 0.3, 0.7, 0.3),
    ]
    for row, pareto in zip(rows, (True, True, False), strict=True):
        row.pareto = pareto
    return SweepReport(
        model={"name": "lenet", "arch_kwargs": None, "input_shape": [3, 32, 32]},
        data="cifar10",
        config=SweepConfig(parse_settings(betas=[0.01, 0.1])),
        robust_attack="PGD-10 (L-inf, eps=8/255)",
        rows=rows,
        speed=speed_report(),
        accuracy=accuracy_report(),
    )


@pytest.mark.parametrize("make", [speed_report, accuracy_report, sweep_report])
def test_json_round_trip(make, tmp_path):
    report = make()
    path = write_json(report, tmp_path / "report.json")
    document = json.loads(path.read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["tool"]["name"] == "gdws-export" and document["created"].endswith("+00:00")
    back = read_json(path)
    assert type(back) is type(report)
    assert to_document(back)["report"] == document["report"]


def test_sweep_report_lists_pareto_settings_fastest_first():
    report = sweep_report()
    assert report.pareto_settings == ["beta=0.01", "original"]
    assert to_document(report)["report"]["pareto_settings"] == ["beta=0.01", "original"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"kind": "speed"}, "no schema_version"),
        ({"schema_version": 99, "kind": "speed", "report": {}}, "schema_version 99"),
        ({"schema_version": 1, "kind": "tea", "report": {}}, "unknown report kind"),
        ({"schema_version": 1, "kind": "speed", "report": {"settings": {}}}, "malformed speed"),
    ],
)
def test_bad_documents_are_one_line_errors(document, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        from_document(document)
    assert "\n" not in str(info.value)


def test_unreadable_report_files(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not JSON"):
        read_json(tmp_path / "bad.json")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(speed_report(), tmp_path / "report.json")
    before = path.read_text()
    broken = speed_report()
    broken.results[0].images_per_s = float("nan")  # strict JSON has no NaN
    with pytest.raises(InvalidInputError, match="non-finite"):
        write_json(broken, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_markdown_documents(tmp_path):
    speed = render_markdown(speed_report())
    assert speed.startswith("# gdws-export speed report")
    assert "| runner | batch |" in speed and "| original | 1 | 4 |" in speed
    assert "ARMv8, 8/8 threads" in speed and "Orin (driver 540, TensorRT 10.3)" in speed
    assert "power mode MAXN" in speed
    accuracy = render_markdown(accuracy_report())
    assert (
        "| original | PGD-10 (L-inf, eps=8/255, ...) | pytorch | 100 | 80.00 | 40.00 | 80.00 | 41.00 | +1.00 ! |"
        in accuracy
    )
    path = write_markdown(sweep_report(), tmp_path / "sweep.md", plot="sweep.png")
    text = path.read_text()
    assert "| setting | MACs | params |" in text
    assert "| beta=0.01 | 600 | 80 | 80.0 | 1.60x | 12.000 | 79.00 | 49.00 | 49.00 | yes |" in text
    assert (
        "Pareto-optimal (no other setting is both faster and more robust): beta=0.01, original"
        in text
    )
    assert "![robust accuracy against images/s](sweep.png)" in text


def test_plot_is_a_png(tmp_path):
    path = plot_sweep(sweep_report(), tmp_path / "plot.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary left
