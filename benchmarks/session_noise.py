"""How far one speed-up moves between ONNX Runtime sessions: the original and its GDWS graph
timed in fresh session pairs, at 1 and 2 intra-op threads.

The paper table times each graph in one session. On a 2-vCPU virtual machine the same two
graphs then give different ratios from run to run (VGG-16 GDWS at 0.25: 1.74x to 2.26x in
three tables). Here each trial builds a new pair of sessions and times them interleaved
(`harness.speed.benchmark`, batch 32, `--duration` seconds each), so the spread over trials is
the spread between sessions, which no single table shows. Speed depends on shapes and kernel
counts only, so the GDWS model is `approximate(mac_ratio=...)` unweighted and unrefit, every
layer lowered to the reference form ("gather").

Run (about 4 minutes):
    PYTHONPATH=. python benchmarks/session_noise.py

Writes benchmarks/results/session-noise-<date>.{md,json} (`--out` to change).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks._common import command_line, write_json_and_markdown
from gdws_export import approximate
from gdws_export.harness.machine import machine_info
from gdws_export.harness.speed import benchmark
from gdws_export.lowering import export_onnx
from gdws_export.models import load_model
from gdws_export.runtimes import OrtRunner

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = ("fmnist_vgg16_bn_w16", "fmnist_preact_resnet18_w16")


def measure(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Per thread count: every trial's median batch latencies and speed-up."""
    model = load_model(args.models_dir / f"{name}.pt").eval()
    gdws, _ = approximate(model, mac_ratio=args.mac_ratio)
    shape = tuple(model.input_shape)
    paths = {}
    for key, module in (("original", model), ("gdws", gdws)):
        paths[key] = workdir / f"{name}-{key}.onnx"
        export_onnx(module, input_shape=shape, path=paths[key], lowering="gather",
                    exporter="legacy")  # fmt: skip
    by_threads = {}
    for threads in args.threads:
        trials = []
        for _ in range(args.trials):
            runners = {key: OrtRunner(path, threads=threads) for key, path in paths.items()}
            report = benchmark(runners, batch_sizes=(args.batch,), duration_s=args.duration,
                               reference="original", input_shape=shape)  # fmt: skip
            trials.append({
                "original_ms": report.result("original", args.batch).latency.median_ms,
                "gdws_ms": report.result("gdws", args.batch).latency.median_ms,
                "speedup": report.speedup("gdws", args.batch),
            })  # fmt: skip
        speedups = [t["speedup"] for t in trials]
        by_threads[str(threads)] = {
            "trials": trials,
            "speedup_min": min(speedups),
            "speedup_median": statistics.median(speedups),
            "speedup_max": max(speedups),
        }
        print(f"{name}, {threads} thread(s): speed-up {min(speedups):.2f}x to "
              f"{max(speedups):.2f}x over {len(trials)} session pairs", flush=True)  # fmt: skip
    return {"checkpoint": name, "mac_ratio": args.mac_ratio, "threads": by_threads}


def render(rows: list[dict], command: str, machine: str, args: argparse.Namespace) -> str:
    lines = [
        "# Speed-up between ONNX Runtime sessions",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}.",
        "",
        f"Each trial: a fresh session for the original and for GDWS at mac_ratio "
        f"{args.mac_ratio} (unweighted, all-gather lowering), timed interleaved at batch "
        f"{args.batch} for {args.duration:g} s each; median latency per session.",
        "",
        "| checkpoint | threads | original ms per trial | GDWS ms per trial | speed-up min / median / max |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        for threads, result in row["threads"].items():
            original = ", ".join(f"{t['original_ms']:.2f}" for t in result["trials"])
            gdws = ", ".join(f"{t['gdws_ms']:.2f}" for t in result["trials"])
            lines.append(
                f"| {row['checkpoint']} | {threads} | {original} | {gdws} | "
                f"{result['speedup_min']:.2f}x / {result['speedup_median']:.2f}x / "
                f"{result['speedup_max']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("checkpoints", nargs="*", default=list(CHECKPOINTS))
    add("--models-dir", type=Path, default=Path(__file__).parent.parent / "models")
    add("--mac-ratio", type=float, default=0.25)
    add("--threads", nargs="+", type=int, default=[1, 2])
    add("--trials", type=int, default=6, help="fresh session pairs per thread count")
    add("--batch", type=int, default=32)
    add("--duration", type=float, default=1.0, help="timed seconds per graph and trial")
    add("--out", type=Path, default=None, help="output stem; default results/session-noise-<date>")
    args = parser.parse_args(argv)
    for name in args.checkpoints:
        if not (args.models_dir / f"{name}.pt").is_file():
            parser.error(f"no checkpoint {args.models_dir / f'{name}.pt'}")
    if not 0 < args.mac_ratio <= 1:
        parser.error(f"--mac-ratio must be in (0, 1], got {args.mac_ratio}")
    if min(args.threads) < 1 or args.trials < 1 or args.batch < 1 or args.duration <= 0:
        parser.error("--threads, --trials and --batch must be at least 1, --duration above 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    torch.set_num_threads(max(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, args, Path(tmp)) for name in args.checkpoints]
    out = args.out or RESULTS / f"session-noise-{datetime.date.today().isoformat()}"
    command = command_line("session_noise.py", argv)
    machine = machine_info(gpu=False).summary()
    json_path, md_path = write_json_and_markdown(
        out, {"command": command, "machine": machine, "rows": rows},
        render(rows, command, machine, args),
    )  # fmt: skip
    paths = {"json": json_path, "markdown": md_path}
    print(f"wrote {paths['json']}, {paths['markdown']}")
    return paths


if __name__ == "__main__":
    main()
