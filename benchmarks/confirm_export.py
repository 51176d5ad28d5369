"""Confirm an export on test images its search never saw: the original model and the shipped
model attacked on the same images, compared image by image, and replayed on the engines.

The export judged its candidates on a few hundred held-out *calibration* images; this is the
check afterwards, on the test split: white-box PGD (100 steps by default) on the original
model and on the engine's PyTorch twin (`shipped.pt2`, the model exactly as it ships), the
same `--samples` test images and attack seed for both, so the robust-accuracy drop has a
paired 95 % interval (`pipeline.operating_point.PairedDrop`). The adversarial images are then
replayed on `original.onnx` and on the shipped engine, so the figures are the engine's.

Run, on the folder an export wrote:
    PYTHONPATH=. python benchmarks/confirm_export.py gdws-out --samples 2000 --steps 100

Writes benchmarks/results/confirm-export-<date>-<model>.{md,json} (`--out` to change).
Fashion-MNIST's test split installs offline: apt-get install dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from benchmarks._common import (
    attack_and_replay,
    command_line,
    drop_figures,
    pgd_attack,
    read_export,
    shipped_engine,
    shipped_twin,
    write_json_and_markdown,
)
from gdws_export.harness.data import load_dataset
from gdws_export.harness.machine import machine_info
from gdws_export.pipeline import ExportConfig
from gdws_export.pipeline.model import load_configured_model, prepare_model
from gdws_export.pipeline.operating_point import PairedDrop
from gdws_export.runtimes.onnxruntime import OrtRunner

RESULTS = Path(__file__).parent / "results"


def confirm(folder: Path, args: argparse.Namespace) -> dict:
    """Attack the original and the shipped twin on the test images; replay on the engines."""
    report = read_export(folder)
    settings = ExportConfig.from_dict(report["settings"])
    original, shape, _ = prepare_model(load_configured_model(settings), settings)
    original.eval()
    x, y = load_dataset(args.data, split="test", limit=args.samples, input_shape=shape)
    eps = args.eps if args.eps is not None else settings.alpha_eps
    attack = pgd_attack(eps, args.steps, args.seed)
    rows = {
        "original": attack_and_replay(
            original, OrtRunner(str(folder / "original.onnx"), threads=settings.threads),
            x, y, attack, args.batch_size,
        ),
        "shipped": attack_and_replay(
            shipped_twin(folder, report), shipped_engine(folder, report), x, y, attack,
            args.batch_size,
        ),
    }  # fmt: skip
    drop = PairedDrop.from_outcomes(rows["original"]["robust"], rows["shipped"]["robust"])
    engine_drop = PairedDrop.from_outcomes(rows["original"]["engine_robust"],
                                           rows["shipped"]["engine_robust"])  # fmt: skip
    return {
        "export": str(folder),
        "model": report["model"]["path"],
        "settings": {
            k: report["settings"][k]
            for k in ("mac_ratio", "max_robust_drop", "target", "precision", "threads")
        },
        "search": report.get("search"),
        "speed_check": report.get("exports", {}).get("gdws", {}).get("speed_check"),
        "data": f"{args.data} test split, first {len(y)} images",
        "attack": attack.describe(),
        "accuracy": {
            name: {key: round(float(values.float().mean()), 5) for key, values in row.items()}
            for name, row in rows.items()
        },
        "drop": drop_figures(drop),
        "engine_drop": drop_figures(engine_drop),
    }


def to_markdown(result: dict, command: str, machine: str) -> str:
    acc = result["accuracy"]
    drop, engine = result["drop"], result["engine_drop"]
    search = result["search"] or {}
    chosen = (
        search.get("probes", [{}])[search["chosen"]] if search.get("chosen") is not None else {}
    )
    lines = [
        f"# Export confirmed on test images: {Path(result['model']).name}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        f"Export: `{result['export']}` (MAC ratio {result['settings']['mac_ratio']}, "
        f"{chosen.get('measure', '?')} alphas; search drop on {search.get('held_out', '?')} "
        f"held-out calibration images {chosen.get('drop_points', float('nan')):+.2f} points). "
        f"Speed: {result['speed_check']}.",
        "",
        f"Data: {result['data']}; attack {result['attack']}, white-box on each PyTorch model "
        "(the original, and the shipped engine's twin shipped.pt2), replayed on its engine.",
        "",
        "| model | clean % | robust % | engine clean % | engine robust % (replay) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in acc.items():
        lines.append(
            f"| {name} | {100 * row['clean']:.2f} | {100 * row['robust']:.2f} "
            f"| {100 * row['engine_clean']:.2f} | {100 * row['engine_robust']:.2f} |"
        )
    lines += [
        "",
        f"Robust-accuracy drop, paired on {drop['images']} images: {drop['points']:+.2f} points "
        f"(95 % interval {drop['interval'][0]:+.2f} .. {drop['interval'][1]:+.2f}; "
        f"{drop['lost']} images lost, {drop['gained']} gained); on the engines "
        f"{engine['points']:+.2f} ({engine['interval'][0]:+.2f} .. {engine['interval'][1]:+.2f}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="the folder gdws-export wrote")
    parser.add_argument("--data", default="fashion-mnist", help="dataset (its test split)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100, help="PGD steps")
    parser.add_argument("--eps", type=float, help="default: the export's --alpha-eps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--out", type=Path, help="results stem (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if not (args.export / "report.json").is_file():
        parser.error(f"{args.export} holds no report.json: pass the folder gdws-export wrote")
    result = confirm(args.export, args)
    machine = machine_info()
    result["machine"] = machine.to_dict()
    stem = args.out or RESULTS / (
        f"confirm-export-{datetime.date.today().isoformat()}-{Path(result['model']).stem}"
    )
    markdown = to_markdown(result, command_line("confirm_export.py", argv), machine.summary())
    json_path, md_path = write_json_and_markdown(stem, result, markdown)
    print(markdown, end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
