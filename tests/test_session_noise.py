"""benchmarks/session_noise.py on a small LeNet: one row per checkpoint, every thread count's
trials with their own sessions, and the summary drawn from those trials (no speed asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import session_noise
from tests import _model_files as files


def test_trials_and_summary_end_to_end(tmp_path):
    files.checkpoint(tmp_path, name="lenet_small.pt")
    argv = ["lenet_small", "--models-dir", str(tmp_path), "--mac-ratio", "0.5",
            "--threads", "1", "2", "--trials", "2", "--batch", "4", "--duration", "0.05",
            "--out", str(tmp_path / "noise")]  # fmt: skip
    paths = session_noise.main(argv)
    (row,) = json.loads(paths["json"].read_text())["rows"]
    assert row["checkpoint"] == "lenet_small" and row["mac_ratio"] == 0.5
    assert set(row["threads"]) == {"1", "2"}
    for result in row["threads"].values():
        trials = result["trials"]
        assert len(trials) == 2
        for trial in trials:
            assert trial["speedup"] == pytest.approx(trial["original_ms"] / trial["gdws_ms"])
        speedups = sorted(t["speedup"] for t in trials)
        assert result["speedup_min"] == speedups[0] and result["speedup_max"] == speedups[-1]
    text = paths["markdown"].read_text()
    assert text.count("| lenet_small |") == 2 and "session_noise.py lenet_small" in text


def test_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        session_noise.parse_args(["nothere", "--models-dir", str(tmp_path)])
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option",
    [
        ["--mac-ratio", "0"],
        ["--mac-ratio", "1.5"],
        ["--trials", "0"],
        ["--auto-repeats", "0"],
        ["--duration", "0"],
        ["--exclude", "features.99"],
    ],
)
def test_bad_settings_are_usage_errors(tmp_path, capsys, option):
    files.checkpoint(tmp_path, name="lenet_small.pt")
    with pytest.raises(SystemExit):
        session_noise.parse_args(["lenet_small", "--models-dir", str(tmp_path), *option])
    assert option[0] in capsys.readouterr().err


def test_kept_convs_stay_in_the_timed_graph(tmp_path, monkeypatch):
    """--exclude: the GDWS model timed keeps those convs (the LeNet's only GDWS conv here, so
    the "GDWS" graph is the original's convs)."""
    files.checkpoint(tmp_path, name="lenet_small.pt")
    seen = []
    real = session_noise.approximate
    monkeypatch.setattr(session_noise, "approximate",
                        lambda *a, **k: seen.append(k.get("exclude")) or real(*a, **k))  # fmt: skip
    argv = ["lenet_small", "--models-dir", str(tmp_path), "--threads", "1", "--trials", "1",
            "--batch", "2", "--duration", "0.05", "--exclude", "features.3",
            "--out", str(tmp_path / "noise")]  # fmt: skip
    paths = session_noise.main(argv)
    assert seen == [["features.3"]]
    assert "features.3 kept exact" in paths["markdown"].read_text()


def test_auto_lowering_exports_again_per_trial(tmp_path, monkeypatch):
    files.checkpoint(tmp_path, name="lenet_small.pt")
    calls = []
    real = session_noise.export_onnx

    def counting(module, **kwargs):
        calls.append(kwargs["lowering"])
        return real(module, **kwargs)

    monkeypatch.setattr(session_noise, "export_onnx", counting)
    argv = ["lenet_small", "--models-dir", str(tmp_path), "--mac-ratio", "0.5", "--lowering",
            "auto", "--threads", "1", "--trials", "2", "--batch", "4", "--duration", "0.05",
            "--out", str(tmp_path / "noise")]  # fmt: skip
    paths = session_noise.main(argv)
    assert calls == ["gather", "auto", "auto"]  # the original once, GDWS once per trial
    (row,) = json.loads(paths["json"].read_text())["rows"]
    trials = row["threads"]["1"]["trials"]
    assert row["lowering"] == "auto" and all(t["forms"] and t["forms"] != "gather" for t in trials)
    text = paths["markdown"].read_text()
    assert "auto lowering exported again for each trial" in text
    assert text.count("lenet_small, 1 thread(s), trial") == 2
