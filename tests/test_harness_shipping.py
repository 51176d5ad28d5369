"""`export_and_build`: the file is named by the stem (dots kept), the engine computes the
model, layers shipped as the original conv are named and can be put back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdws_export import approximate
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.harness.shipping import export_and_build, put_back_originals
from tests._trained import fashion_slice, trained_lenet


def _outputs(runner, x: torch.Tensor) -> np.ndarray:
    with runner:
        return runner.predict(x.numpy())


@pytest.fixture(scope="module")
def lenet_and_gdws():
    model, _, _ = trained_lenet()
    gdws, _ = approximate(model, mac_ratio=0.5, input_shape=tuple(model.input_shape))
    return model, gdws


def test_the_stem_keeps_its_dots_and_the_engine_computes_the_model(lenet_and_gdws, tmp_path):
    model, gdws = lenet_and_gdws
    x = fashion_slice()[0][:16]
    shipped = export_and_build(gdws, tmp_path / "lenet_r0.5", input_shape=(1, 28, 28),
                               lowering="gather", parity_inputs=x, threads=1)  # fmt: skip
    assert shipped.source.name == "lenet_r0.5.onnx" and shipped.source.is_file()
    assert shipped.original_layers == [] and set(shipped.forms.values()) == {"gather"}
    with torch.no_grad():
        expected = gdws(x).numpy()
    np.testing.assert_allclose(_outputs(shipped.build.runner(), x), expected, atol=1e-4)


def test_layers_shipped_as_the_original_conv_are_named_and_put_back(lenet_and_gdws, tmp_path):
    model, gdws = lenet_and_gdws
    x = fashion_slice()[0][:16]
    shipped = export_and_build(gdws, tmp_path / "dense", input_shape=(1, 28, 28),
                               lowering="dense", original=model, parity_inputs=x, threads=1)  # fmt: skip
    gdws_layers = [n for n, m in gdws.named_modules() if isinstance(m, GDWSConv2d)]
    assert gdws_layers and shipped.original_layers == gdws_layers
    put_back = approximate(model, mac_ratio=0.5, input_shape=(1, 28, 28))[0]
    put_back_originals(put_back, model, shipped.original_layers)
    assert not any(isinstance(m, GDWSConv2d) for m in put_back.modules())
    with torch.no_grad():
        expected = model(x).numpy()
        np.testing.assert_allclose(put_back(x).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(_outputs(shipped.build.runner(), x), expected, atol=1e-4)


def test_torch_target_writes_a_program_not_onnx(lenet_and_gdws, tmp_path):
    _, gdws = lenet_and_gdws
    shipped = export_and_build(gdws, tmp_path / "prog_r0.5", input_shape=(1, 28, 28),
                               target="torch")  # fmt: skip
    assert shipped.source.name == "prog_r0.5.pt2" and shipped.source.is_file()
    assert not list(tmp_path.glob("*.onnx"))
