"""Confirm paper-table rows on more images: the original and each named variant, PGD-100 on
the same `--samples` test images (1000 by default, five times the table's 200), compared image
by image.

The paper table attacks 200 images: a standard error of about 3 points, too coarse for a
0.5-point target. Here each row is rebuilt the way the table builds it (same sensitivities,
same `approximate` call, same export with the auto lowering, whose original convs go back into
the PyTorch model) and attacked on the PyTorch model, the adversarial images replayed on the
ONNX Runtime graph. Because both models see the same images, the difference in robust accuracy
has a paired standard error, from the images only one of the two gets right.

Run (about 15 minutes for the two rows below):
    PYTHONPATH=. python benchmarks/confirm_rows.py \\
        fmnist_preact_resnet18_w16:gdws-calibrated@0.25 fmnist_wrn28_4_w16:gdws-none@0.25

Writes benchmarks/results/ort-cpu-<date>-confirm.{md,json} (`--out` to change).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import tempfile
from pathlib import Path

import torch

from benchmarks import paper_table
from benchmarks._common import check_kept_convs, command_line, write_json_and_markdown
from benchmarks.paper_table_variants import (
    build_variants,
    compute_sensitivities,
    export_default_choices,
    parse_variant,
)
from gdws_export.attacks import AttackConfig
from gdws_export.harness.accuracy import attack_batched, predict_batched
from gdws_export.harness.attack_copy import attack_copy
from gdws_export.harness.data import load_dataset
from gdws_export.harness.machine import machine_info
from gdws_export.harness.measure_choice import AUTO_MEASURES
from gdws_export.models import load_model


def confirm_row(name: str, variant_name: str, data, args, workdir: Path) -> dict:
    """Rebuild `variant_name` of checkpoint `name`, attack it and the original on the same
    images; per-image agreement and the paired difference. A `gdws-auto+refit@<ratio>` row is
    the refit row gdws-export's default would ship (`export_default_choices`)."""
    x_train, y_train, x_test, y_test = data
    model = load_model(args.models_dir / f"{name}.pt").eval()
    measure, refit, ratio = parse_row(variant_name)
    measures = AUTO_MEASURES if measure == "auto" else (measure,)
    sensitivities = compute_sensitivities(model, (x_train, y_train), measures, eps=args.eps,
                                          samples=args.calib_samples)  # fmt: skip
    calibration = (x_train[: args.calib_samples], y_train[: args.calib_samples])
    exclude = args.keep_exact.get(name, ())
    variants = build_variants(model, (ratio,), sensitivities, baselines=(),
                              refit=measures if refit else (), refit_data=calibration,
                              eps=args.eps, exclude=exclude)  # fmt: skip
    chosen = None
    if measure == "auto":
        held_out = slice(args.calib_samples, args.calib_samples + args.held_out_samples)
        (chosen,) = export_default_choices(variants, (ratio,),
                                           (x_train[held_out], y_train[held_out]), args.eps)  # fmt: skip
        variant_name = chosen["variant"]
    original, variant = variants[0], next(v for v in variants if v.name == variant_name)
    table_args = paper_table.parse_args(["--threads", str(args.threads), "--checkpoints", name,
                                         "--models-dir", str(args.models_dir)])  # fmt: skip
    x, y = x_test[: args.samples], y_test[: args.samples]
    attack = AttackConfig("pgd", eps=args.eps, step_size=args.step_size, steps=args.steps)
    masks, engine_masks = {}, {}
    for v in (original, variant):
        build = paper_table.export_variant(v, model, workdir / f"{name}-{v.name}", x[:16],
                                           table_args)  # fmt: skip
        masks[v.name], engine_masks[v.name] = _robust_masks(v.model, build.runner(), x, y, attack,
                                                            args.eval_batch)  # fmt: skip
    return {
        "checkpoint": name,
        "variant": variant_name if chosen is None else f"{variant_name} (auto)",
        "kept_exact": list(exclude),
        "export_default": chosen,
        "lowering": paper_table.lowering_summary(variant),
        "samples": len(y),
        "attack": attack.describe(),
        "pytorch": paired(masks[original.name], masks[variant.name]),
        "engine": paired(engine_masks[original.name], engine_masks[variant.name]),
    }


def pytorch_robust(model, x, y, attack, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(per image: clean and adversarial both correct, the adversarial images) on PyTorch. The
    model is attacked as the paper table attacks it (its `attack_copy`, in
    `evaluate_accuracy`'s batches), so both see the same images."""
    model = attack_copy(model)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    x_adv = attack_batched(model, x, y, attack, batch)
    with torch.no_grad():
        return clean & (model(x_adv).argmax(1) == y), x_adv


def parse_row(name: str) -> tuple[str, bool, float]:
    """`parse_variant`, plus "gdws-auto+refit@<ratio>" (measure "auto")."""
    match = re.fullmatch(r"gdws-auto\+refit@([0-9.]+)", name)
    return ("auto", True, float(match.group(1))) if match else parse_variant(name)


def _robust_masks(model, runner, x, y, attack, batch):
    """Per image: robust on PyTorch (`pytorch_robust`), and on the engine (the same adversarial
    images replayed)."""
    robust, x_adv = pytorch_robust(model, x, y, attack, batch)
    with runner:
        engine_clean = torch.from_numpy(predict_batched(runner, x.numpy(), batch)).argmax(1) == y
        engine_adv = torch.from_numpy(predict_batched(runner, x_adv.numpy(), batch)).argmax(1)
    return robust, engine_clean & (engine_adv == y)


def paired(original: torch.Tensor, variant: torch.Tensor) -> dict:
    """Robust accuracies of two models on the same images and their paired difference.

    Only the images exactly one model gets right move the difference; its standard error is
    sqrt(b + c - (b - c)^2 / n) / n with b, c those two counts (McNemar's setting)."""
    n = len(original)
    both = int((original & variant).sum())
    only_original = int((original & ~variant).sum())
    only_variant = int((~original & variant).sum())
    difference = (only_variant - only_original) / n
    se = math.sqrt(max(only_original + only_variant - (only_variant - only_original) ** 2 / n,
                       0.0)) / n  # fmt: skip
    return {
        "original": (both + only_original) / n,
        "variant": (both + only_variant) / n,
        "both": both,
        "only_original": only_original,
        "only_variant": only_variant,
        "neither": n - both - only_original - only_variant,
        "difference_points": 100 * difference,
        "se_points": 100 * se,
        "ci95_points": [100 * (difference - 1.96 * se), 100 * (difference + 1.96 * se)],
    }


def render(rows: list[dict], command: str, machine: str) -> str:
    lines = [
        "# Paper-table rows confirmed on more images",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Attack: {rows[0]['attack'] if rows else ''}, white-box on PyTorch, "
        "replayed on the ONNX Runtime graph; original and variant attacked on the same images. "
        "Difference = variant minus original, in points; the interval is 95 % (paired: only "
        "images exactly one model gets right count).",
        "",
        "| checkpoint | variant | lowering shipped | images | original robust % | variant "
        "robust % | difference (95 % CI) | only original / only variant | engine: original / "
        "variant % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, e = r["pytorch"], r["engine"]
        low, high = p["ci95_points"]
        kept = r.get("kept_exact")
        variant = f"{r['variant']}, {', '.join(kept)} exact" if kept else r["variant"]
        lines.append(
            f"| {r['checkpoint']} | {variant} | {r['lowering']} | {r['samples']} | "
            f"{100 * p['original']:.1f} | {100 * p['variant']:.1f} | "
            f"{p['difference_points']:+.1f} ({low:+.1f} to {high:+.1f}) | "
            f"{p['only_original']} / {p['only_variant']} | "
            f"{100 * e['original']:.1f} / {100 * e['variant']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("rows", nargs="+", help="checkpoint:variant, e.g. fmnist_wrn28_4_w16:gdws-none@0.25")
    add("--models-dir", type=Path, default=Path(__file__).parent.parent / "models")
    add("--data", default="fashion-mnist")
    add("--samples", type=int, default=1000, help="test images attacked per model")
    add("--calib-samples", type=int, default=256)
    add("--held-out-samples", type=int, default=256,
        help="training images after the calibration ones that judge gdws-auto+refit rows")  # fmt: skip
    add("--calib", type=Path, default=None,
        help="an .npz of calibration images (e.g. models/fashion_mnist_calib_512.npz, as the "
             "README's export commands use) instead of the training split of --data")  # fmt: skip
    add("--keep-exact", nargs="*", type=paper_table.keep_exact_entry,
        default=list(map(paper_table.keep_exact_entry, paper_table.KEEP_EXACT)),
        help="NAME:LAYER[,LAYER]: convs kept exact, as the paper table's option (NAME: for "
             f"none); default {' '.join(paper_table.KEEP_EXACT)}")  # fmt: skip
    add("--eps", type=float, default=0.1)
    add("--step-size", type=float, default=0.01)
    add("--steps", type=int, default=100)
    add("--eval-batch", type=int, default=100)
    add("--threads", type=int, default=1,
        help="ONNX Runtime intra-op threads of the auto lowering and the replay (the "
             "table's default)")  # fmt: skip
    add("--torch-threads", type=int, default=os.cpu_count() or 1,
        help="PyTorch threads of the sensitivities, refit and attacks")  # fmt: skip
    add(
        "--out", type=Path, default=None, help="output stem; default results/ort-cpu-<date>-confirm"
    )
    args = parser.parse_args(argv)
    for row in args.rows:
        if ":" not in row:
            parser.error(f"row {row!r} is not checkpoint:variant")
        name, variant = row.split(":", 1)
        try:
            parse_row(variant)
        except ValueError as exc:
            parser.error(str(exc))
        if not (args.models_dir / f"{name}.pt").is_file():
            parser.error(f"row {row!r}: no checkpoint {args.models_dir / f'{name}.pt'}")
    if args.calib is not None and not args.calib.is_file():
        parser.error(f"--calib {args.calib}: no such file")
    for option in ("samples", "steps", "eval_batch", "threads", "torch_threads", "calib_samples",
                   "held_out_samples"):  # fmt: skip
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    args.keep_exact = dict(args.keep_exact)
    for name in {row.split(":", 1)[0] for row in args.rows}:
        if args.keep_exact.get(name):
            check_kept_convs(parser, "--keep-exact", args.models_dir / f"{name}.pt",
                             args.keep_exact[name])  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    data = paper_table.load_data(args.data)
    if args.calib is not None:  # calibrate on the file, evaluate on --data's test split
        data = (*load_dataset(args.calib), *data[2:])
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for spec in args.rows:
            name, variant = spec.split(":", 1)
            rows.append(confirm_row(name, variant, data, args, Path(tmp)))
            p = rows[-1]["pytorch"]
            print(f"{spec}: {100 * p['original']:.1f} -> {100 * p['variant']:.1f} "
                  f"({p['difference_points']:+.1f} +- {p['se_points']:.1f})", flush=True)  # fmt: skip
    date = datetime.date.today().isoformat()
    out = args.out or paper_table.RESULTS / f"ort-cpu-{date}-confirm"
    command = command_line("confirm_rows.py", argv)
    machine = machine_info(gpu=False).summary()
    json_path, md_path = write_json_and_markdown(
        out, {"command": command, "machine": machine, "rows": rows}, render(rows, command, machine)
    )
    paths = {"json": json_path, "markdown": md_path}
    print(f"wrote {paths['json']}, {paths['markdown']}")
    return paths


if __name__ == "__main__":
    main()
