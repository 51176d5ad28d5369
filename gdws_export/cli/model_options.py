"""The "model" options, which `export` and `sweep` share: which file and how to load it, and
the argparse types they (and the GDWS options) parse values with."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from typing import Any

from gdws_export.errors import InvalidInputError
from gdws_export.pipeline.config import parse_input_shape


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The "model" options: which file and how to load it (`export` and `sweep` share them;
    `model_settings` reads them back)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "model",
        metavar="MODEL",
        help="the model file: a gdws-export checkpoint, a state_dict (with --arch), a "
        "TorchScript archive, a torch.export program (.pt2), or a pickled nn.Module "
        "(with --trust-pickle)",
    )
    model.add_argument(
        "--arch",
        metavar="NAME",
        help="architecture of a state_dict, from the "
        "models registry (lenet, resnet18, preact_resnet18, vgg16_bn, wrn28_4, ...)",
    )
    model.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classes of --arch (default: the architecture's, 10)",
    )
    model.add_argument(
        "--arch-kwargs",
        type=json_object,
        metavar="JSON",
        help="other arguments of --arch, e.g. '{\"width\": 32}'",
    )
    model.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a whole pickled "
        "nn.Module; loading it RUNS CODE FROM THE FILE: only for files you trust",
    )
    model.add_argument(
        "--input-shape",
        type=input_shape,
        metavar="NxCxHxW",
        help="input shape, e.g. 1x3x32x32 (default: what the file or architecture records)",
    )
    model.add_argument(
        "--mean",
        type=floats,
        metavar="M[,M,...]",
        help="per-channel mean to bake into the graph, so engines take [0, 1] images (with --std)",
    )
    model.add_argument("--std", type=floats, metavar="S[,S,...]", help="per-channel std")


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ExportConfig fields the "model" options set (see `add_model_options`)."""
    return dict(
        model=str(args.model), arch=args.arch, num_classes=args.num_classes,
        arch_kwargs=args.arch_kwargs, trust_pickle=args.trust_pickle,
        input_shape=args.input_shape, mean=args.mean, std=args.std,
    )  # fmt: skip


def input_shape(text: str) -> tuple[int, ...]:
    """'1x3x32x32' or '3x32x32' -> a tuple of sizes (`parse_input_shape`)."""
    try:
        return parse_input_shape(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--input-shape ")) from exc


def floats(text: str) -> tuple[float, ...]:
    """'0.5,0.25' -> (0.5, 0.25)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from exc


def fraction(text: str) -> float:
    """'0.03' or '8/255' -> float."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.03 or 8/255)") from exc


def json_object(text: str) -> dict:
    """'{"width": 32}' -> {"width": 32}; anything but a JSON object is refused."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'{text!r} is not a JSON object ({{"name": value}})')
    return value
