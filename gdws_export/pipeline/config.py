"""`ExportConfig`: every setting of one export, validated, with its defaults resolved here.

The CLI maps each option to one field; a sweep builds configs directly. Defaults (all in
`ExportConfig.resolved`):

- none of `beta`, `mac_ratio`, `time_ratio`: with `calib`, the operating-point search
  (`max_robust_drop`, 0.5 points: the fewest MACs, a MAC ratio and layers kept exact, whose
  model keeps robust accuracy on held-out calibration images within it); without data,
  `mac_ratio = DEFAULT_MAC_RATIO`
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

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gdws_export.errors import InvalidInputError

# The settings' names and defaults live with their checks (config_checks); the CLI and the
# sweep import them from here.
from gdws_export.pipeline import config_checks as check
from gdws_export.pipeline.config_checks import (  # noqa: F401
    AUTO_CALIB_SAMPLES,
    DEFAULT_ALPHA_EPS,
    DEFAULT_CALIB_SAMPLES,
    DEFAULT_HELD_OUT,
    DEFAULT_MAC_RATIO,
    EXPORTERS,
    PRECISIONS,
    SENSITIVITIES,
    TARGETS,
)
from gdws_export.pipeline.operating_point import DEFAULT_MAX_ROBUST_DROP  # noqa: F401 (the CLI's)


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
        method: the compression method (`gdws_export.methods`): "gdws" (default), "dws",
            "l1-prune", "tucker2", "lowrank", "kronecker", or a combination over different
            layer types ("gdws,kronecker"). Options made for GDWS layers (`beta`,
            `time_ratio`, `max_layer_error`, `refit`) are refused for methods that make none,
            and so are sensitivities for methods that use no alphas (docs/methods.md).
        beta: per-layer error bound (the paper's LEGO); exclusive with `mac_ratio`.
        mac_ratio: MAC budget in (0, 1] of the replaceable convs. Defaults to 0.75.
        time_ratio: time budget in (0, 1] of the replaceable convs, priced by layer costs
            measured on ONNX Runtime at `batch` and `threads` (`measure_layer_costs`).
        max_layer_error: cap in (0, 1] on each layer's share of dropped (weighted) error under
            a budget; None: 0.35 for `time_ratio`, no cap for `mac_ratio` (see `approximate`).
        max_robust_drop: the operating-point search's budget, in points of robust accuracy on
            held-out `calib` images: the export ships the fewest MACs (a MAC ratio, layers kept
            exact) whose model stays within it (`pipeline.operating_point`). None:
            `DEFAULT_MAX_ROBUST_DROP` (0.5) when `calib` is given and no budget (`beta`,
            `mac_ratio`, `time_ratio`) is.
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
    method: str = "gdws"
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
        check.choice("target", c.target, TARGETS)
        check.choice("precision", c.precision, PRECISIONS)
        check.choice("exporter", c.exporter, EXPORTERS)
        check.method(c)
        check.gdws_settings(c)
        check.refit(c)
        check.sensitivity(c)
        check.shape_and_batch(c)
        check.normalization(c)
        check.target_options(c)
        check.lowering(c.lowering)
        check.opset(c)
        check.counts_and_eps(c)
        check.outputs(c)
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
