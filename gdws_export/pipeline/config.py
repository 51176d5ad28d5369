"""`ExportConfig`: every setting of one export, validated, with its defaults resolved here.

The CLI maps each option to one field; a sweep builds configs directly. Defaults (all in
`ExportConfig.resolved`):

- none of `beta`, `mac_ratio`, `time_ratio`: with `calib`, the operating-point search
  (`max_robust_drop`, 0.5 points: the smallest MAC ratio whose model keeps robust accuracy
  on held-out calibration images within it); without data, `mac_ratio = DEFAULT_MAC_RATIO`
  (0.75): the GDWS convs keep at most three quarters of the MACs of the convs they replace,
  since nothing can tell how deep a cut the model bears;
- `output`: `<model file stem>-<target>-<precision>` in the working directory;
- `batch`: None, a dynamic batch with TensorRT's default profile (1, 1, 64); with
  `dynamic_batch=False` a batch of 1;
- `refit`: on when `calib` is given (`refit_pointwise`: each GDWS layer's 1x1 conv refit to
  the original conv's outputs on the calibration images, clean and PGD; it kept robust
  accuracy at much deeper cuts in benchmarks/results), off without data;
- alphas: from `alphas` (a file), else by `sensitivity`: "none" (unweighted) or "relative"
  (`relative_gains`, each layer's error relative to its weight energy), both from the weights
  alone, or on `calib` data "activation" (activation-aware SVD), "calibrated"
  (`calibrated_gains`) or "noise-gains" (the paper's); without `calib` those are unweighted;
  or "auto": the model built with each of none and calibrated, the one that keeps
  the most held-out calibration images right under PGD ships (`harness.measure_choice`).
  The default follows `refit`: "auto" with refit under a MAC or time budget (no one measure
  was best on every bundled model with the refit: unweighted on VGG-16, calibrated on
  PreActResNet-18), "none" with refit under `beta` or an `alphas` file, "relative" without
  refit (it kept the most robust accuracy at matched MACs without the refit);
- `calib_samples`: 512, or 256 with "auto" or the search, which judge the measures and the
  operating point on the next `held_out_samples` (256) images of `calib`;
- `opset`: 18, the dynamo exporter's lowest (an opset the exporter or ONNX Runtime does not
  support is refused: `lowering.export.supported_opsets`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gdws_export.errors import InvalidInputError
from gdws_export.limits import check_batch, check_input_dims
from gdws_export.pipeline.operating_point import DEFAULT_MAX_ROBUST_DROP

TARGETS = ("ort", "trt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
EXPORTERS = ("dynamo", "legacy")
DEFAULT_MAC_RATIO = 0.75
DEFAULT_CALIB_SAMPLES = 512
AUTO_CALIB_SAMPLES = 256  # with --sensitivity auto, which holds out the next images
DEFAULT_HELD_OUT = 256  # images `auto` judges the measures on: a 2-point gap is 5 of them
DEFAULT_ALPHA_EPS = 8 / 255
SENSITIVITIES = ("auto", "none", "relative", "activation", "calibrated", "noise-gains")


@dataclass
class ExportConfig:
    """Settings of one `run_export`; `resolved()` validates them and fills the defaults.

    Attributes:
        model: the model file (state_dict, checkpoint, TorchScript, .pt2, pickled module).
        output: output directory. Defaults to `<model stem>-<target>-<precision>`.
        arch, num_classes, arch_kwargs: the registered architecture of a state_dict.
        trust_pickle: allow a whole pickled nn.Module (runs code from the file).
        input_shape: (C, H, W), or (N, C, H, W) where N sets `batch`. Defaults to what the
            file or architecture records.
        mean, std: per-channel normalization baked into the exported graph, so engines take
            [0, 1] images.
        target: "ort" (ONNX Runtime), "trt" (TensorRT) or "torch" (PyTorch running a
            torch.export program, for machines with neither).
        precision: "fp32", "fp16" or "int8" (needs `calib`; not for "torch", whose "fp16"
            needs a GPU).
        gdws: False exports the original model only (for comparison).
        beta: per-layer error bound (the paper's LEGO); exclusive with `mac_ratio`.
        mac_ratio: MAC budget in (0, 1] of the replaceable convs. Defaults to 0.75.
        time_ratio: time budget in (0, 1] of the replaceable convs, priced by layer costs
            measured on ONNX Runtime at `batch` and `threads` (`measure_layer_costs`).
        max_layer_error: cap in (0, 1] on each layer's share of dropped (weighted) error under
            a budget; None: 0.35 for `time_ratio`, no cap for `mac_ratio` (see `approximate`).
        max_robust_drop: the operating-point search's budget, in points of robust accuracy on
            held-out `calib` images: the export ships the smallest MAC ratio whose model stays
            within it (`pipeline.operating_point`). None: `DEFAULT_MAX_ROBUST_DROP` (0.5) when
            `calib` is given and no budget (`beta`, `mac_ratio`, `time_ratio`) is.
        min_speedup: search the other way: the largest MAC ratio (the most robust model) whose
            graph, exported with `lowering`, runs at least this many times the original's
            speed on ONNX Runtime at `batch` and `threads`. Needs `calib`; > 1.
        exclude: convs kept exact: module names or shell-style patterns ("features.3",
            "layer4.*"), as `find_convs` takes them; one that names no conv is an error.
        alphas: alphas file (`save_alphas`); without it, alphas are computed on `calib`.
        calib: data for alphas, INT8 calibration and parity checks: an .npz file, an image
            folder, an IDX folder or a dataset name (`load_dataset`; named datasets and IDX
            folders use their train split).
        calib_samples: samples of `calib` used for alphas, the refit and INT8 calibration.
            Defaults to 512, or 256 with sensitivity "auto".
        held_out_samples: with sensitivity "auto", how many images of `calib` after the first
            `calib_samples` judge the measures (256).
        alpha_eps: L-inf radius of the PGD attacks of the alphas, the refit and "auto". None:
            the eps a gdws-export checkpoint records it was adversarially trained at, else
            8/255 (resolved once the model is loaded, in `run_export`).
        sensitivity: "none" (unweighted) or "relative", from the weights alone, or computed
            on `calib`: "activation", "calibrated" or "noise-gains" (the paper's); "auto"
            builds the model with each of none and calibrated and ships the one
            most robust on held-out `calib` images (`harness.measure_choice`). None: "auto"
            with refit under a budget, "none" with refit otherwise, "relative" without refit
            (module docstring).
        refit: refit each GDWS layer's 1x1 conv on `calib` (`refit_pointwise`). None: on
            when `calib` is given.
        lowering: "auto" or one lowering form for every GDWS layer.
        exporter: "dynamo" (default) or "legacy".
        opset: ONNX opset, within what the exporter and ONNX Runtime support
            (`lowering.export.supported_opsets`). Defaults to 18.
        dynamic_batch: symbolic batch axis; False fixes it to `batch`.
        batch: the engine profile's optimal and largest batch (and the batch `auto` lowering
            is timed at); Triton's max_batch_size.
        workspace_mib, timing_cache: TensorRT builder settings.
        threads: ONNX Runtime threads for timings and the built session.
        triton_repo: also write a Triton model repository there; `triton_name` names the model
            (defaults to the model file's stem).
        force: replace an existing output directory (and Triton model) that gdws-export
            wrote (see `pipeline.outputs.check_destination`).
        dry_run: plan only: load, approximate, report; write nothing.
        seed: seeds torch and the alphas attack.
    """

    model: str
    output: str | None = None
    arch: str | None = None
    num_classes: int | None = None
    arch_kwargs: dict[str, Any] | None = None
    trust_pickle: bool = False
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    target: str = "ort"
    precision: str = "fp32"
    gdws: bool = True
    beta: float | None = None
    mac_ratio: float | None = None
    time_ratio: float | None = None
    max_layer_error: float | None = None
    max_robust_drop: float | None = None
    min_speedup: float | None = None
    exclude: tuple[str, ...] = ()
    alphas: str | None = None
    calib: str | None = None
    calib_samples: int | None = None
    held_out_samples: int = DEFAULT_HELD_OUT
    alpha_eps: float | None = None
    sensitivity: str | None = None
    refit: bool | None = None
    lowering: str = "auto"
    exporter: str = "dynamo"
    opset: int | None = None
    dynamic_batch: bool = True
    batch: int | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    threads: int | None = None
    triton_repo: str | None = None
    triton_name: str | None = None
    force: bool = False
    dry_run: bool = False
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def resolved(self) -> ExportConfig:
        """A validated copy with every default filled in.

        Raises:
            InvalidInputError: a value out of range or options that do not go together; the
                message names the option.
        """
        c = replace(self, notes=list(self.notes))
        if not c.model or not isinstance(c.model, str):
            raise InvalidInputError("no model file given")
        _choice("target", c.target, TARGETS)
        _choice("precision", c.precision, PRECISIONS)
        _choice("exporter", c.exporter, EXPORTERS)
        _check_gdws_settings(c)
        _check_refit(c)
        _check_sensitivity(c)
        _check_shape_and_batch(c)
        _check_normalization(c)
        _check_target_options(c)
        _check_lowering(c.lowering)
        _check_opset(c)
        for name in ("calib_samples", "held_out_samples", "threads", "workspace_mib",
                     "num_classes"):  # fmt: skip
            _positive_int(name, getattr(c, name),
                          allow_none=name not in ("calib_samples", "held_out_samples"))  # fmt: skip
        if c.alpha_eps is not None:
            if not (isinstance(c.alpha_eps, (int, float)) and math.isfinite(c.alpha_eps)):
                raise InvalidInputError(f"--alpha-eps must be a number, got {c.alpha_eps!r}")
            if c.alpha_eps <= 0:
                raise InvalidInputError(f"--alpha-eps must be > 0, got {c.alpha_eps}")
        if c.output is None:
            c.output = f"{Path(c.model).stem}-{c.target}-{c.precision}"
        if c.triton_repo is not None:
            from gdws_export.serving.triton import check_model_name

            if c.triton_name is None:  # an empty --triton-name is refused, not replaced
                c.triton_name = _triton_name(Path(c.model).stem)
            check_model_name(c.triton_name, "--triton-name")
        return c

    def searches(self) -> bool:
        """Whether the export searches its operating point (`--max-robust-drop`, the default
        with `calib` and no budget, or `--min-speedup`) rather than take a fixed budget."""
        return self.max_robust_drop is not None or self.min_speedup is not None

    def holds_out(self) -> bool:
        """Whether images of `calib` after the first `calib_samples` judge candidates: for
        `--sensitivity auto` or the operating-point search."""
        return self.gdws and (self.sensitivity == "auto" or self.searches())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable settings (as given or, after `resolved()`, as used)."""
        data = asdict(self)
        for key in ("input_shape", "mean", "std"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        data = dict(data)
        for key in ("input_shape", "mean", "std", "exclude"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1x3x32x32' or '3x32x32' (also with ',' between sizes) -> a tuple of positive ints.

    Raises:
        InvalidInputError: not 3 or 4 positive integers.
    """
    parts = re.split(r"[x,X*]", text.strip())
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise InvalidInputError(
            f"--input-shape {text!r} is malformed; write NxCxHxW or CxHxW with positive sizes, "
            "e.g. 1x3x32x32"
        )
    return dims


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def _positive_int(name: str, value, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        option = "--" + name.replace("_", "-")
        raise InvalidInputError(f"{option} must be a positive integer, got {value!r}")


def _check_gdws_settings(c: ExportConfig) -> None:
    if isinstance(c.exclude, str):
        c.exclude = (c.exclude,)
    c.exclude = tuple(c.exclude or ())
    for pattern in c.exclude:
        if not isinstance(pattern, str) or not pattern.strip():
            raise InvalidInputError(
                f"--exclude takes conv names or patterns such as features.3, got {pattern!r}"
            )
    if not c.gdws:
        given = [
            n
            for n in (
                "beta",
                "mac_ratio",
                "time_ratio",
                "max_layer_error",
                "max_robust_drop",
                "min_speedup",
                "alphas",
                "exclude",
            )
            if getattr(c, n) not in (None, ())
        ]
        if given:
            options = ", ".join("--" + n.replace("_", "-") for n in given)
            raise InvalidInputError(
                f"--no-gdws exports the original model; {options} would be ignored: leave it out"
            )
        return
    if sum(x is not None for x in (c.beta, c.mac_ratio, c.time_ratio)) > 1:
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
        if not _finite(c.max_robust_drop) or not 0 <= c.max_robust_drop < 100:
            raise InvalidInputError(
                f"--max-robust-drop must be a number of points in [0, 100), got "
                f"{c.max_robust_drop!r}"
            )
        if c.beta is not None or c.mac_ratio is not None or c.time_ratio is not None:
            raise InvalidInputError(
                "--max-robust-drop searches for the budget; --beta, --mac-ratio and "
                "--time-ratio fix it: give one or the other"
            )
        if c.calib is None:
            raise InvalidInputError(
                "--max-robust-drop judges candidates on held-out --calib images: pass --calib DATA"
            )
        c.max_robust_drop = float(c.max_robust_drop)
    elif c.beta is None and c.mac_ratio is None and c.time_ratio is None:
        if c.calib is not None:
            c.max_robust_drop = DEFAULT_MAX_ROBUST_DROP
            c.notes.append(
                "none of --beta, --mac-ratio, --time-ratio given: the smallest MAC ratio whose "
                f"robust accuracy on held-out --calib images stays within "
                f"{DEFAULT_MAX_ROBUST_DROP} points of the original's (--max-robust-drop)"
            )
        else:
            c.mac_ratio = DEFAULT_MAC_RATIO
            c.notes.append(
                f"none of --beta, --mac-ratio, --time-ratio given: mac_ratio {DEFAULT_MAC_RATIO}"
            )
    if c.max_layer_error is not None:
        if c.beta is not None:
            raise InvalidInputError(
                "--max-layer-error caps a budget (--mac-ratio or --time-ratio), not --beta"
            )
        if not _finite(c.max_layer_error) or not 0 < c.max_layer_error <= 1:
            raise InvalidInputError(
                f"--max-layer-error must be in (0, 1] (each layer's largest share of dropped "
                f"error), got {c.max_layer_error}"
            )
        c.max_layer_error = float(c.max_layer_error)
    for name, what in (("mac_ratio", "MACs"), ("time_ratio", "time")):
        value = getattr(c, name)
        if value is None:
            continue
        if not _finite(value) or not 0 < value <= 1:
            raise InvalidInputError(
                f"--{name.replace('_', '-')} must be in (0, 1] (the fraction of the replaceable "
                f"convs' {what} to keep), got {value}"
            )
        setattr(c, name, float(value))


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


def _check_sensitivity(c: ExportConfig) -> None:
    """Resolve the default measure (module docstring) and `calib_samples`; check "auto"."""
    if c.sensitivity is None:
        comparable = c.beta is None and c.alphas is None  # same budget, measures not given
        c.sensitivity = ("auto" if comparable else "none") if c.refit else "relative"
    _choice("sensitivity", c.sensitivity, SENSITIVITIES)
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


def _check_refit(c: ExportConfig) -> None:
    if c.refit is None:
        c.refit = c.gdws and c.calib is not None
        if c.refit:
            c.notes.append("--calib given: the 1x1 convs are refit on it (--no-refit: not)")
        return
    if c.refit and not c.gdws:
        raise InvalidInputError("--refit refits GDWS layers; --no-gdws exports the original")
    if c.refit and c.calib is None:
        raise InvalidInputError("--refit needs calibration data: pass --calib DATA")


def _check_shape_and_batch(c: ExportConfig) -> None:
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


def _check_normalization(c: ExportConfig) -> None:
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


def _check_target_options(c: ExportConfig) -> None:
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


def _check_opset(c: ExportConfig) -> None:
    """The opset the exporter will write (the default filled in), so the report's settings
    say what the files carry."""
    from gdws_export.lowering.export import check_opset

    c.opset = check_opset(c.opset, c.exporter)


def _check_lowering(lowering: str) -> None:
    from gdws_export.lowering.forms import is_form

    if lowering != "auto" and not is_form(lowering):
        raise InvalidInputError(
            f"--lowering {lowering!r} is unknown; use auto, gather, uniform, slots, fold, "
            "fold-<S> (S >= 2) or dense"
        )


def _triton_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
    return "model" if name in ("", ".", "..") else name


def _finite(value) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
