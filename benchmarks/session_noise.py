"""How far one speed-up moves between ONNX Runtime sessions: the original and its GDWS graph
timed in fresh session pairs, at 1 and 2 intra-op threads.

The paper table times each graph in one session. On a 2-vCPU virtual machine the same two
graphs then give different ratios from run to run (VGG-16 GDWS at 0.25: 1.74x to 2.26x in
three tables). Here each trial builds a new pair of sessions and times them interleaved
(`harness.speed.benchmark`, batch 32, `--duration` seconds each), so the spread over trials is
the spread between sessions, which no single table shows. Speed depends on shapes and kernel
counts only, so the GDWS model is `approximate(mac_ratio=...)` unweighted and unrefit, every
layer lowered to the reference form ("gather"). With `--lowering auto` each trial exports the
GDWS graph again as `gdws-export` and the paper table ship it (forms timed per layer at the
trial's threads and `--batch`, original convs where faster), so the spread also covers the
lowering's choices: the speed-up a shipped graph can be expected to give on this machine.

Run (about 4 minutes):
    PYTHONPATH=. python benchmarks/session_noise.py
The shipped VGG-16 of the paper table's target row (about 3 minutes):
    PYTHONPATH=. python benchmarks/session_noise.py fmnist_vgg16_bn_w16 --lowering auto \
        --threads 1 --trials 10

Writes benchmarks/results/session-noise-<date>.{md,json} (`--out` to change).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks._common import (
    check_kept_convs,
    command_line,
    forms_summary,
    write_json_and_markdown,
)
from gdws_export import approximate
from gdws_export.harness.machine import machine_info
from gdws_export.harness.speed import benchmark
from gdws_export.lowering import export_onnx
from gdws_export.models import load_model
from gdws_export.runtimes import OrtRunner

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = ("fmnist_vgg16_bn_w16", "fmnist_preact_resnet18_w16")
LOWERINGS = {
    "gather": "unweighted, all-gather lowering",
    "auto": "unweighted, auto lowering exported again for each trial, original convs where faster",
}


def measure(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Per thread count: every trial's median batch latencies and speed-up."""
    model = load_model(args.models_dir / f"{name}.pt").eval()
    gdws, _ = approximate(model, mac_ratio=args.mac_ratio, exclude=args.exclude or None)
    shape = tuple(model.input_shape)
    paths = {key: workdir / f"{name}-{key}.onnx" for key in ("original", "gdws")}
    fixed = {"original": model} if args.lowering == "auto" else {"original": model, "gdws": gdws}
    for key, module in fixed.items():  # auto exports the GDWS graph again in every trial
        export_onnx(module, input_shape=shape, path=paths[key], lowering="gather",
                    exporter="legacy")  # fmt: skip
    by_threads = {}
    for threads in args.threads:
        trials = []
        for _ in range(args.trials):
            forms = "gather"
            if args.lowering == "auto":  # a fresh choice of forms per trial
                result = export_onnx(gdws, input_shape=shape, path=paths["gdws"], lowering="auto",
                                     original=model, exporter="legacy", batch=args.batch,
                                     threads=threads, repeats=args.auto_repeats)  # fmt: skip
                forms = forms_summary(result.forms)
            runners = {key: OrtRunner(path, threads=threads) for key, path in paths.items()}
            report = benchmark(runners, batch_sizes=(args.batch,), duration_s=args.duration,
                               reference="original", input_shape=shape)  # fmt: skip
            trials.append({
                "original_ms": report.result("original", args.batch).latency.median_ms,
                "gdws_ms": report.result("gdws", args.batch).latency.median_ms,
                "speedup": report.speedup("gdws", args.batch),
                "forms": forms,
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
    return {"checkpoint": name, "mac_ratio": args.mac_ratio, "lowering": args.lowering,
            "threads": by_threads}  # fmt: skip


def render(rows: list[dict], command: str, machine: str, args: argparse.Namespace) -> str:
    lines = [
        "# Speed-up between ONNX Runtime sessions",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}.",
        "",
        f"Each trial: a fresh session for the original and for GDWS at mac_ratio "
        f"{args.mac_ratio}"
        + (f", {', '.join(args.exclude)} kept exact" if args.exclude else "")
        + f" ({LOWERINGS[args.lowering]}), timed interleaved at batch "
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
    if args.lowering == "auto":
        lines += ["", "Forms shipped per trial:", ""]
        for row in rows:
            for threads, result in row["threads"].items():
                for i, trial in enumerate(result["trials"], 1):
                    lines.append(f"- {row['checkpoint']}, {threads} thread(s), trial {i}: "
                                 f"{trial['forms']} ({trial['speedup']:.2f}x)")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("checkpoints", nargs="*", default=list(CHECKPOINTS))
    add("--models-dir", type=Path, default=Path(__file__).parent.parent / "models")
    add("--mac-ratio", type=float, default=0.25)
    add("--exclude", nargs="*", default=[], metavar="LAYER",
        help="convs kept exact (gdws-export --exclude), e.g. features.3")  # fmt: skip
    add("--threads", nargs="+", type=int, default=[1, 2])
    add("--trials", type=int, default=6, help="fresh session pairs per thread count")
    add("--batch", type=int, default=32)
    add("--lowering", choices=tuple(LOWERINGS), default="gather",
        help="gather: one fixed graph; auto: exported again per trial, as shipped")  # fmt: skip
    add("--auto-repeats", type=int, default=7,
        help="timing rounds of each auto choice (export_onnx's repeats, default 7)")  # fmt: skip
    add("--duration", type=float, default=1.0, help="timed seconds per graph and trial")
    add("--out", type=Path, default=None, help="output stem; default results/session-noise-<date>")
    args = parser.parse_args(argv)
    for name in args.checkpoints:
        if not (args.models_dir / f"{name}.pt").is_file():
            parser.error(f"no checkpoint {args.models_dir / f'{name}.pt'}")
    for name in args.checkpoints if args.exclude else ():
        check_kept_convs(parser, "--exclude", args.models_dir / f"{name}.pt", args.exclude)
    if not 0 < args.mac_ratio <= 1:
        parser.error(f"--mac-ratio must be in (0, 1], got {args.mac_ratio}")
    if min(args.threads) < 1 or min(args.trials, args.batch, args.auto_repeats) < 1:
        parser.error("--threads, --trials, --batch and --auto-repeats must be at least 1")
    if args.duration <= 0:
        parser.error("--duration must be above 0")
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
