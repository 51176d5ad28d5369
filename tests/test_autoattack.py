"""AutoAttack as an optional evaluation: a one-line error naming the package when it is absent,
and, where `pyautoattack` (or the authors' `autoattack`) is installed, a small real run."""

from __future__ import annotations

import sys

import pytest
import torch
from _trained import trained_lenet

from gdws_export.errors import InvalidInputError, MissingDependencyError
from gdws_export.harness.autoattack import autoattack_accuracy, import_autoattack


def test_absent_package_is_one_line_naming_it(monkeypatch):
    for name in ("autoattack", "pyautoattack"):  # None in sys.modules: import raises
        monkeypatch.setitem(sys.modules, name, None)
    model, x, y = trained_lenet()
    with pytest.raises(MissingDependencyError) as caught:
        autoattack_accuracy(model, x[:4], y[:4], eps=8 / 255)
    message = str(caught.value)
    assert "\n" not in message and "pyautoattack" in message
    assert 'pip install "gdws-export[autoattack]"' in message
    assert caught.value.exit_code == 5


def test_bad_settings_are_refused_before_the_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    model, x, y = trained_lenet()
    with pytest.raises(InvalidInputError, match="version must be one of"):
        autoattack_accuracy(model, x, y, eps=0.1, version="fast")
    with pytest.raises(InvalidInputError, match="unknown norm"):
        autoattack_accuracy(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(InvalidInputError, match="n_images must be"):
        autoattack_accuracy(model, x, y, eps=0.1, n_images=0)


@pytest.mark.slow
def test_a_real_autoattack_run_on_a_few_images():
    try:
        package = import_autoattack()
    except MissingDependencyError:
        pytest.skip("AutoAttack is not installed (pip install pyautoattack)")
    model, x, y = trained_lenet()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = autoattack_accuracy(model, x, y, eps=0.1, n_images=16, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        clean = float((model(x[:16]).argmax(1) == y[:16]).float().mean())
    assert result.samples == 16 and result.attack == "autoattack"
    assert result.robust_accuracy < clean  # eps 0.1 breaks this undefended LeNet
    assert result.max_perturbation <= 0.1 + 1e-6
    assert result.config["package"] == package.__name__
    assert result.description == "AutoAttack standard (L-inf, eps=0.1, seed 0)"
