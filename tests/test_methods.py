"""The method interface (gdws_export.methods): registry, errors, combinations, budgets, and
every method's report against the model it returns."""

from __future__ import annotations

import pytest
import torch

from gdws_export.errors import BudgetOutOfReachError, InvalidInputError
from gdws_export.methods import Budget, compress, get_method, list_methods
from gdws_export.methods.kronecker import KroneckerConfig
from gdws_export.methods.lowrank import Tucker2Config
from gdws_export.methods.pruning import L1PruneConfig
from gdws_export.models import create_model
from gdws_export.pipeline.model import count_macs_params

SHAPE = (1, 16, 16)
METHODS = ("gdws", "dws", "l1-prune", "tucker2", "lowrank", "kronecker", "gdws,kronecker")


@pytest.fixture(scope="module")
def vgg():
    """A width-2 VGG-16 (13 convs, BatchNorms, a Linear head) with random weights."""
    torch.manual_seed(0)
    return create_model("vgg16_bn", in_channels=1, input_size=16, width=2).eval()


def test_every_method_is_registered():
    assert set(METHODS[:-1]) <= set(list_methods())


def test_unknown_method_says_what_exists():
    with pytest.raises(InvalidInputError) as caught:
        get_method("tuker2")
    message = str(caught.value)
    assert "did you mean 'tucker2'" in message and "gdws, kronecker" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "message"),
    [("gdws,tucker2", "gdws and tucker2 both replace Conv2d"), ("gdws,gdws", "named twice")],
)
def test_combinations_must_replace_different_types(name, message):
    with pytest.raises(InvalidInputError, match=message):
        get_method(name)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_report_macs_and_params_match_the_model(vgg, name, ratio):
    small, report = get_method(name).apply(vgg, Budget(mac_ratio=ratio), input_shape=SHAPE)
    macs, params = count_macs_params(vgg, SHAPE)
    assert count_macs_params(small, SHAPE) == (
        macs - report.macs_before + report.macs_after,
        params - report.params_before + report.params_after,
    )
    assert report.to_dict()["method"] == name
    assert all({"name", "status", "macs_before", "params_after", "weighted_error"}
               <= set(layer) for layer in report.to_dict()["layers"])  # fmt: skip
    x = torch.rand(4, *SHAPE)
    if ratio == 1.0:  # the budget pays for every original layer: the same model
        assert report.replaced == []
        torch.testing.assert_close(small(x), vgg(x), rtol=0, atol=0)
    else:
        assert report.replaced and report.achieved_mac_ratio < 1 or name == "kronecker"


def test_combination_splits_exclude_and_reports_both(vgg):
    method = get_method("gdws,kronecker")
    small, report = method.apply(vgg, Budget(mac_ratio=0.5), input_shape=SHAPE,
                                 exclude=("classifier", "features.3"))  # fmt: skip
    statuses = {layer.name: layer.status for layer in report.layers}
    assert statuses["classifier"] == "skipped" and statuses["features.3"] == "skipped"
    assert set(report.parts) == {"gdws", "kronecker"}
    with pytest.raises(InvalidInputError, match="matches no layer"):
        method.apply(vgg, Budget(mac_ratio=0.5), input_shape=SHAPE, exclude=("nope",))


def test_budget_kinds_and_configs_are_checked(vgg):
    with pytest.raises(InvalidInputError, match="--method tucker2 takes --mac-ratio, not --beta"):
        get_method("tucker2").apply(vgg, Budget(beta=0.1), input_shape=SHAPE)
    with pytest.raises(InvalidInputError, match="solver"):
        Tucker2Config(solver="best")
    with pytest.raises(InvalidInputError, match="skip_first"):
        Tucker2Config(skip_first="yes")
    with pytest.raises(InvalidInputError, match="multiple_of"):
        L1PruneConfig(multiple_of=0)


def test_compress_finds_the_method_by_config_type(vgg):
    small, report = compress(vgg, KroneckerConfig(solver="greedy"), Budget(mac_ratio=0.5),
                             input_shape=SHAPE)  # fmt: skip
    assert report.method == "kronecker" and report.details.solver == "greedy"


@pytest.mark.parametrize(("name", "ratio"), [("tucker2", 1e-4), ("dws", 0.01),
                                             ("kronecker", 0.01), ("l1-prune", 1e-4)])  # fmt: skip
def test_a_budget_out_of_reach_says_how_low_it_can_go(vgg, name, ratio):
    with pytest.raises(BudgetOutOfReachError, match="out of reach") as caught:
        get_method(name).apply(vgg, Budget(mac_ratio=ratio), input_shape=SHAPE)
    assert ratio < caught.value.reachable < 1
