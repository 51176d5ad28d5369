"""The checks of `ExportConfig.resolved()`, one function per group of settings.

Each takes the config being resolved, raises `InvalidInputError` naming the option (as the CLI
spells it) and fills the defaults of its group in place; `resolved()` calls them in order.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gdws_export.errors import InvalidInputError
from gdws_export.gdws.budget import check_budget_ratio
from gdws_export.limits import check_batch, check_input_dims
from gdws_export.pipeline.operating_point import DEFAULT_MAX_ROBUST_DROP

if TYPE_CHECKING:
    from gdws_export.pipeline.config import ExportConfig

TARGETS = ("ort", "trt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
EXPORTERS = ("dynamo", "legacy")
DEFAULT_MAC_RATIO = 0.75
DEFAULT_CALIB_SAMPLES = 512
AUTO_CALIB_SAMPLES = 256  # with --sensitivity auto, which holds out the next images
DEFAULT_HELD_OUT = 256  # images `auto` judges the measures on: a 2-point gap is 5 of them
DEFAULT_ALPHA_EPS = 8 / 255
SENSITIVITIES = ("auto", "none", "relative", "activation", "calibrated", "noise-gains")

# What --no-gdws leaves nothing to do for.
GDWS_ONLY = ("beta", "mac_ratio", "time_ratio", "max_layer_error", "max_robust_drop",
             "min_speedup", "alphas", "exclude")  # fmt: skip
BUDGETS = ("beta", "mac_ratio", "time_ratio")


def choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """`--name` must be one of `choices`."""
    if value not in choices:
        raise InvalidInputError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(name: str, value, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{_option(name)} must be a positive integer, got {value!r}")


def method(c: ExportConfig) -> None:
    """--method: a registered method or a combination (unknown: one line listing the known
    ones). What a method does not use is refused, not ignored (docs/methods.md): `--beta`,
    `--time-ratio` and `--max-layer-error` unless it takes them, `--refit` unless it makes
    GDWS layers (off by default then), `--alphas` and `--sensitivity` unless it weighs
    errors by alphas ("none" then), "activation" unless it takes input moments."""
    from gdws_export.methods import get_method

    if not isinstance(c.method, str):
        raise InvalidInputError(f"--method takes a method name, got {c.method!r}")
    c.method = ",".join(part.strip() for part in c.method.split(","))
    chosen = get_method(c.method)
    if not c.gdws:
        if c.method != "gdws":
            raise InvalidInputError(
                f"--no-gdws exports the original model; --method {c.method} would be ignored: "
                "leave it out"
            )
        return
    takes = {*chosen.budgets, *(("max_layer_error",) if "time_ratio" in chosen.budgets else ())}
    for name in ("beta", "time_ratio", "max_layer_error"):
        budgets = ", ".join(_option(b) for b in chosen.budgets)
        if getattr(c, name) is not None and name not in takes:
            raise InvalidInputError(
                f"{_option(name)} is GDWS's; --method {c.method} takes {budgets} (or searches "
                "it with --calib)"
            )
    if not chosen.makes_gdws:
        if c.refit:
            raise InvalidInputError(
                f"--refit refits the 1x1 convs of GDWS layers; --method {c.method} makes none"
            )
        c.refit = False
        if c.lowering != "auto":
            c.notes.append(f"--lowering {c.lowering} lowers GDWS layers; --method {c.method} "
                           "makes none: its layers export as plain ONNX ops")  # fmt: skip
    if not chosen.uses_alphas:
        given = [f"--{n}" for n in ("alphas", "sensitivity") if getattr(c, n) not in (None, "none")]
        if given:
            raise InvalidInputError(
                f"{given[0]} weighs the errors of GDWS and the conv factorizations; --method "
                f"{c.method} uses no alphas: leave it out"
            )
        c.sensitivity = "none"
    elif not chosen.uses_input_moments and c.sensitivity == "activation":
        raise InvalidInputError(
            f"--sensitivity activation makes GDWS's SVD activation-aware; --method {c.method} "
            "takes none, relative, calibrated, noise-gains or auto"
        )


def gdws_settings(c: ExportConfig) -> None:
    """--exclude, --no-gdws, and the budget or the search: one of them, in range; fills the
    default (the search with --calib, else `DEFAULT_MAC_RATIO`)."""
    _check_exclude(c)
    if not c.gdws:
        given = [n for n in GDWS_ONLY if getattr(c, n) not in (None, ())]
        if given:
            options = ", ".join(_option(n) for n in given)
            raise InvalidInputError(
                f"--no-gdws exports the original model; {options} would be ignored: leave it out"
            )
        return
    if sum(getattr(c, n) is not None for n in BUDGETS) > 1:
        raise InvalidInputError(
            "give one of --beta (error bound), --mac-ratio (MAC budget) or --time-ratio "
            "(time budget), not more"
        )
    if c.beta is not None:
        if not _finite(c.beta) or c.beta < 0:
            raise InvalidInputError(
                f"--beta must be a finite number >= 0 (the per-layer weighted error bound), "
                f"got {c.beta}"
            )
        c.beta = float(c.beta)
    if c.min_speedup is not None:
        _check_min_speedup(c)
    elif c.max_robust_drop is not None:
        _check_max_robust_drop(c)
    elif all(getattr(c, n) is None for n in BUDGETS):
        _default_budget(c)
    _check_ratios(c)


def _check_exclude(c: ExportConfig) -> None:
    if isinstance(c.exclude, str):
        c.exclude = (c.exclude,)
    c.exclude = tuple(c.exclude or ())
    for pattern in c.exclude:
        if not isinstance(pattern, str) or not pattern.strip():
            raise InvalidInputError(
                f"--exclude takes conv names or patterns such as features.3, got {pattern!r}"
            )


def _check_max_robust_drop(c: ExportConfig) -> None:
    if not _finite(c.max_robust_drop) or not 0 <= c.max_robust_drop < 100:
        raise InvalidInputError(
            f"--max-robust-drop must be a number of points in [0, 100), got {c.max_robust_drop!r}"
        )
    if any(getattr(c, n) is not None for n in BUDGETS):
        raise InvalidInputError(
            "--max-robust-drop searches for the budget; --beta, --mac-ratio and "
            "--time-ratio fix it: give one or the other"
        )
    if c.calib is None:
        raise InvalidInputError(
            "--max-robust-drop judges candidates on held-out --calib images: pass --calib DATA"
        )
    c.max_robust_drop = float(c.max_robust_drop)


def _default_budget(c: ExportConfig) -> None:
    """No budget and no search given: the search with --calib, else `DEFAULT_MAC_RATIO`."""
    if c.calib is not None:
        c.max_robust_drop = DEFAULT_MAX_ROBUST_DROP
        c.notes.append(
            "none of --beta, --mac-ratio, --time-ratio given: the fewest MACs (a MAC ratio, "
            "layers kept exact) whose "
            f"robust accuracy on held-out --calib images stays within "
            f"{DEFAULT_MAX_ROBUST_DROP} points of the original's (--max-robust-drop)"
        )
    else:
        c.mac_ratio = DEFAULT_MAC_RATIO
        c.notes.append(
            f"none of --beta, --mac-ratio, --time-ratio given: mac_ratio {DEFAULT_MAC_RATIO}"
        )


def _check_ratios(c: ExportConfig) -> None:
    """--max-layer-error, --mac-ratio and --time-ratio: fractions in (0, 1]
    (`check_budget_ratio`)."""
    if c.max_layer_error is not None:
        if c.beta is not None:
            raise InvalidInputError(
                "--max-layer-error caps a budget (--mac-ratio or --time-ratio), not --beta"
            )
        c.max_layer_error = check_budget_ratio(
            c.max_layer_error, "--max-layer-error", "each layer's largest share of dropped error"
        )
    for name, what in (("mac_ratio", "MACs"), ("time_ratio", "time")):
        value = getattr(c, name)
        if value is not None:
            meaning = f"the fraction of the replaceable convs' {what} to keep"
            setattr(c, name, check_budget_ratio(value, _option(name), meaning))


def _check_min_speedup(c: ExportConfig) -> None:
    if not _finite(c.min_speedup) or c.min_speedup <= 1:
        raise InvalidInputError(
            f"--min-speedup must be a number > 1 (times the original's speed), got "
            f"{c.min_speedup!r}"
        )
    fixed = [n for n in ("beta", "mac_ratio", "time_ratio", "max_robust_drop")
             if getattr(c, n) is not None]  # fmt: skip
    if fixed:
        option = "--" + fixed[0].replace("_", "-")
        raise InvalidInputError(
            f"--min-speedup searches for the budget and {option} sets it or another goal: give one"
        )
    if c.calib is None:
        raise InvalidInputError(
            "--min-speedup chooses the measure and reports robust accuracy on held-out --calib "
            "images: pass --calib DATA"
        )
    if c.target != "ort":
        raise InvalidInputError(
            "--min-speedup times the candidates on ONNX Runtime: use --target ort, or give "
            "--mac-ratio for other targets"
        )
    c.min_speedup = float(c.min_speedup)


def sensitivity(c: ExportConfig) -> None:
    """Resolve the default measure (module docstring) and `calib_samples`; check "auto"."""
    if c.sensitivity is None:
        comparable = c.beta is None and c.alphas is None  # same budget, measures not given
        c.sensitivity = ("auto" if comparable else "none") if c.refit else "relative"
    choice("sensitivity", c.sensitivity, SENSITIVITIES)
    if c.sensitivity == "auto" and c.gdws:
        if c.calib is None:
            raise InvalidInputError(
                "--sensitivity auto judges the measures on held-out --calib images: pass "
                "--calib DATA"
            )
        if c.beta is not None:
            raise InvalidInputError(
                "--sensitivity auto compares measures at one budget, and under --beta each "
                "measure keeps a different number of kernels: use --mac-ratio or --time-ratio"
            )
        if c.alphas is not None:
            raise InvalidInputError(
                "--alphas gives the alphas, --sensitivity auto would choose them: give one"
            )
    if c.calib_samples is None:
        c.calib_samples = AUTO_CALIB_SAMPLES if c.holds_out() else DEFAULT_CALIB_SAMPLES


def refit(c: ExportConfig) -> None:
    """--refit: on by default with --calib (and a method making GDWS layers, `method`)."""
    if c.refit is None:
        c.refit = c.gdws and c.calib is not None
        if c.refit:
            c.notes.append("--calib given: the 1x1 convs are refit on it (--no-refit: not)")
        return
    if c.refit and not c.gdws:
        raise InvalidInputError("--refit refits GDWS layers; --no-gdws exports the original")
    if c.refit and c.calib is None:
        raise InvalidInputError("--refit needs calibration data: pass --calib DATA")


def shape_and_batch(c: ExportConfig) -> None:
    if c.batch is not None:
        check_batch("--batch", c.batch)
    if c.input_shape is None:
        return
    dims = tuple(c.input_shape)
    if len(dims) not in (3, 4) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims
    ):
        raise InvalidInputError(
            f"--input-shape must be NxCxHxW or CxHxW with positive sizes, got {c.input_shape}"
        )
    check_input_dims("--input-shape", dims[-3:])
    if len(dims) == 4:
        check_batch("--input-shape's batch", dims[0])
    if len(dims) == 4:
        if c.batch is not None and c.batch != dims[0]:
            raise InvalidInputError(
                f"--input-shape gives batch {dims[0]} but --batch {c.batch}; give one batch size"
            )
        # A leading 1 (the usual way to write one image) sets nothing; larger N sets the batch.
        if dims[0] > 1:
            c.batch = dims[0]
        dims = dims[1:]
    c.input_shape = dims


def normalization(c: ExportConfig) -> None:
    if (c.mean is None) != (c.std is None):
        raise InvalidInputError("give --mean and --std together, or neither")
    if c.mean is None:
        return
    mean, std = tuple(c.mean), tuple(c.std)
    if len(mean) != len(std) or not mean:
        raise InvalidInputError(
            f"--mean has {len(mean)} values and --std {len(std)}; give one per input channel"
        )
    if not all(_finite(v) for v in mean) or not all(_finite(v) and v > 0 for v in std):
        raise InvalidInputError(
            f"--mean must be finite and --std positive, got mean {mean} and std {std}"
        )
    if c.input_shape is not None and len(mean) not in (1, c.input_shape[0]):
        raise InvalidInputError(
            f"--mean/--std give {len(mean)} values but the input has {c.input_shape[0]} channels"
        )
    c.mean, c.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)


def target_options(c: ExportConfig) -> None:
    if c.precision == "int8" and c.calib is None:
        raise InvalidInputError("--int8 needs calibration data: pass --calib DATA")
    if c.target == "torch":
        if c.precision == "int8":
            raise InvalidInputError("--target torch runs FP32 or FP16 (on a GPU), not --int8")
        if c.triton_repo is not None:
            raise InvalidInputError(
                "--triton-repo serves TensorRT plans and ONNX models: use --target trt or ort"
            )
    if c.target != "trt":
        given = [n for n in ("workspace_mib", "timing_cache") if getattr(c, n) is not None]
        if given:
            names = {"workspace_mib": "--workspace", "timing_cache": "--timing-cache"}
            raise InvalidInputError(
                f"{', '.join(names[n] for n in given)} appl{'ies' if len(given) == 1 else 'y'} "
                "to --target trt only"
            )
    if not c.dynamic_batch and c.batch is None:
        c.batch = 1


def opset(c: ExportConfig) -> None:
    """The opset the exporter will write (the default filled in), so the report's settings
    say what the files carry."""
    from gdws_export.lowering.export import check_opset

    c.opset = check_opset(c.opset, c.exporter)


def lowering(form: str) -> None:
    from gdws_export.lowering.forms import is_form

    if form != "auto" and not is_form(form):
        raise InvalidInputError(
            f"--lowering {form!r} is unknown; use auto, gather, uniform, slots, fold, "
            "fold-<S> (S >= 2) or dense"
        )


def counts_and_eps(c: ExportConfig) -> None:
    """The sample counts, threads, workspace and classes (positive integers), --alpha-eps."""
    for name in ("calib_samples", "held_out_samples", "threads", "workspace_mib",
                 "num_classes"):  # fmt: skip
        _positive_int(name, getattr(c, name),
                      allow_none=name not in ("calib_samples", "held_out_samples"))  # fmt: skip
    if c.alpha_eps is not None:
        if not (isinstance(c.alpha_eps, (int, float)) and math.isfinite(c.alpha_eps)):
            raise InvalidInputError(f"--alpha-eps must be a number, got {c.alpha_eps!r}")
        if c.alpha_eps <= 0:
            raise InvalidInputError(f"--alpha-eps must be > 0, got {c.alpha_eps}")


def outputs(c: ExportConfig) -> None:
    """The default output folder, and the Triton model name (checked)."""
    if c.output is None:
        c.output = f"{Path(c.model).stem}-{c.target}-{c.precision}"
    if c.triton_repo is not None:
        from gdws_export.serving.triton import check_model_name

        if c.triton_name is None:  # an empty --triton-name is refused, not replaced
            c.triton_name = _triton_name(Path(c.model).stem)
        check_model_name(c.triton_name, "--triton-name")


def _triton_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
    return "model" if name in ("", ".", "..") else name


def _finite(value) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
