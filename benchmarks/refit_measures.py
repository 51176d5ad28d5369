"""Which sensitivity to spend the MAC budget by when the 1x1 convs are refit: GDWS with
unweighted alphas ("none") against relative alphas, both refit (`refit_pointwise`), attacked
on the same test images so that their difference has a paired standard error.

Only PyTorch: the models are the GDWS models as `approximate` and the refit leave them, every
layer GDWS (no lowering, no original convs put back), so the comparison is of the allocation
alone. Robust = clean and adversarial both correct, as in `confirm_rows.pytorch_robust`
(white-box PGD against each model's dense evaluation copy; `--steps`, default 20: this
compares two models with each other, not with a published number). This is the measurement
behind the default `--sensitivity` with the refit (`pipeline.config`).

Run (about 12 minutes on 2 cores):
    PYTHONPATH=. python benchmarks/refit_measures.py \\
        fmnist_vgg16_bn_w16:0.25,0.35 fmnist_preact_resnet18_w16:0.25,0.35

Writes benchmarks/results/refit-measures-<date>.{md,json} (`--out` to change).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from benchmarks._common import command_line, write_json_and_markdown
from benchmarks.confirm_rows import paired, pytorch_robust
from benchmarks.paper_table import load_data
from gdws_export import approximate, refit_pointwise, relative_gains
from gdws_export.attacks import AttackConfig
from gdws_export.harness.machine import machine_info
from gdws_export.models import load_model

MEASURES = ("none", "relative")


def compare(name: str, ratios: list[float], data, args) -> list[dict]:
    """Robust masks of the original and of each measure's refit GDWS model at each ratio."""
    x_train, y_train, x_test, y_test = data
    model = load_model(args.models_dir / f"{name}.pt").eval()
    x, y = x_test[: args.samples], y_test[: args.samples]
    calibration = (x_train[: args.calib_samples], y_train[: args.calib_samples])
    attack = AttackConfig("pgd", eps=args.eps, step_size=args.eps / 4, steps=args.steps)
    original, _ = pytorch_robust(model, x, y, attack, args.eval_batch)
    alphas = {"none": None, "relative": relative_gains(model)}
    rows = []
    for ratio in ratios:
        masks = {}
        for measure in MEASURES:
            gdws, _ = approximate(model, mac_ratio=ratio, alphas=alphas[measure],
                                  input_shape=tuple(model.input_shape))  # fmt: skip
            refit, _ = refit_pointwise(gdws, model, calibration, eps=args.eps,
                                       step_size=args.eps / 4, samples=len(calibration[0]))  # fmt: skip
            masks[measure], _ = pytorch_robust(refit, x, y, attack, args.eval_batch)
        row = {
            "checkpoint": name,
            "mac_ratio": ratio,
            "samples": len(y),
            "attack": attack.describe(),
            **{f"{m}+refit": paired(original, masks[m]) for m in MEASURES},
            "none_against_relative": paired(masks["relative"], masks["none"]),
        }
        rows.append(row)
        d = row["none_against_relative"]
        print(f"{name}@{ratio:g}: none+refit minus relative+refit {d['difference_points']:+.1f} "
              f"+- {d['se_points']:.1f} points", flush=True)  # fmt: skip
    return rows


def render(rows: list[dict], command: str, machine: str) -> str:
    lines = [
        "# Sensitivity with the 1x1 refit: unweighted against relative",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Attack: {rows[0]['attack'] if rows else ''}, white-box on PyTorch "
        "against each model; all models attacked on the same test images. Every layer GDWS "
        "(no lowering). Differences in points with their paired 95 % interval.",
        "",
        "| checkpoint | MAC ratio | images | original robust % | none+refit % | relative+refit "
        "% | none+refit minus relative+refit (95 % CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["none_against_relative"]
        low, high = d["ci95_points"]
        lines.append(
            f"| {r['checkpoint']} | {r['mac_ratio']:g} | {r['samples']} "
            f"| {100 * r['none+refit']['original']:.1f} | {100 * r['none+refit']['variant']:.1f} "
            f"| {100 * r['relative+refit']['variant']:.1f} "
            f"| {d['difference_points']:+.1f} ({low:+.1f} to {high:+.1f}) |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("rows", nargs="+", help="checkpoint:ratio[,ratio...], e.g. fmnist_vgg16_bn_w16:0.25,0.35")
    add("--models-dir", type=Path, default=Path(__file__).parent.parent / "models")
    add("--data", default="fashion-mnist")
    add("--samples", type=int, default=1000, help="test images attacked per model")
    add("--calib-samples", type=int, default=256, help="training images the refit uses")
    add("--eps", type=float, default=0.1)
    add("--steps", type=int, default=20)
    add("--eval-batch", type=int, default=250)
    add("--threads", type=int, default=2)
    add("--out", type=Path, default=None,
        help="output stem; default results/refit-measures-<date>")  # fmt: skip
    args = parser.parse_args(argv)
    args.parsed = []
    for spec in args.rows:
        name, _, ratios = spec.partition(":")
        try:
            args.parsed.append((name, [float(r) for r in ratios.split(",")]))
        except ValueError:
            parser.error(f"{spec!r} is not checkpoint:ratio[,ratio...]")
        if not (args.models_dir / f"{name}.pt").is_file():
            parser.error(f"no checkpoint {name}.pt in {args.models_dir}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.data)
    rows = [row for name, ratios in args.parsed for row in compare(name, ratios, data, args)]
    stem = args.out or Path(__file__).parent / "results" / (
        f"refit-measures-{datetime.date.today().isoformat()}"
    )
    command = command_line("refit_measures.py", argv)
    machine = machine_info(gpu=False).summary()
    json_path, md_path = write_json_and_markdown(
        stem, {"command": command, "rows": rows}, render(rows, command, machine)
    )
    paths = {"json": json_path, "md": md_path}
    print(f"wrote {paths['json']}, {paths['md']}")
    return paths


if __name__ == "__main__":
    main()
