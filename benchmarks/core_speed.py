"""Speed of the GDWS core on this machine: `approximate` and `noise_gains` on PreActResNet-18.

Targets (issue: GDWS approximation core): on a 2-core CPU, `approximate` on a CIFAR-size
PreActResNet-18 in under 5 s, and `noise_gains` with 1000 PGD-10 samples in under 5 minutes.

Run:  PYTHONPATH=. python benchmarks/core_speed.py [--samples 1000] [--threads 2]
Writes benchmarks/results/core-speed-cpu.{md,json}. Timing does not depend on the weights or
the pixel values, so the model is freshly initialised and the inputs are uniform noise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from gdws_export import approximate, create_model, noise_gains

RESULTS = Path(__file__).parent / "results"


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _reference_style_seconds_per_sample(model, x, y, eps: float, steps: int) -> float:
    """Seconds per sample of the public reference code's loop: batch of one, PGD on the sample,
    then one backward pass per class pair for the weight gradients of every layer."""
    from gdws_export.attacks import pgd
    from gdws_export.gdws.selection import find_convs

    weights = [s.conv.weight for s in find_convs(model) if s.skip_reason is None]
    start = time.perf_counter()
    for i in range(len(x)):
        xi = pgd(model, x[i : i + 1], y[i : i + 1], eps=eps, steps=steps, step_size=2 / 255)
        z = model(xi)[0]
        t = int(z.argmax())
        for j in range(len(z)):
            if j != t:
                torch.autograd.grad(z[t] - z[j], weights, retain_graph=True)
    return (time.perf_counter() - start) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--reference-samples", type=int, default=5, help="samples timed with the reference loop"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("preact_resnet18").eval()

    cold = _time(lambda: approximate(model, mac_ratio=0.5))
    settings = {"mac_ratio=0.5": {"mac_ratio": 0.5}, "beta=0.1": {"beta": 0.1}}
    warm = {
        label: [_time(lambda s=setting: approximate(model, **s)) for _ in range(args.repeats)]
        for label, setting in settings.items()
    }

    x = torch.rand(args.samples, 3, 32, 32)
    y = torch.randint(0, 10, (args.samples,))
    common = dict(samples=args.samples, batch_size=args.batch_size)
    clean = _time(lambda: noise_gains(model, (x, y), attack=None, **common))
    full = _time(lambda: noise_gains(model, (x, y), eps=8 / 255, steps=10, **common))
    reference = _reference_style_seconds_per_sample(
        model, x[: args.reference_samples], y[: args.reference_samples], 8 / 255, 10
    )

    results = {
        "command": "PYTHONPATH=. python benchmarks/core_speed.py " + " ".join(sys.argv[1:]),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "model": "preact_resnet18 (CIFAR-size, 10 classes)",
        "approximate_s": {
            "first_call_in_process": cold,
            **{
                label: {"median": statistics.median(t), "max": max(t), "repeats": len(t)}
                for label, t in warm.items()
            },
        },
        "noise_gains_s": {
            "samples": args.samples,
            "batch_size": args.batch_size,
            "clean_inputs": clean,
            "pgd10_eps8_255": full,
            "pgd_share": (full - clean) / full,
            "reference_loop_s_per_sample": reference,
            "reference_loop_samples_timed": args.reference_samples,
            "speedup_over_reference_loop": reference * args.samples / full,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core-speed-cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    a, n = results["approximate_s"], results["noise_gains_s"]
    lines = [
        "# GDWS core speed, CPU",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['processor']}, {args.threads} threads, "
        f"torch {torch.__version__}. Model: {results['model']}.",
        "",
        "| what | time | target |",
        "|---|---|---|",
        f"| `approximate(mac_ratio=0.5)`, first call in the process | {a['first_call_in_process']:.2f} s | < 5 s |",
        f"| `approximate(mac_ratio=0.5)`, median of {args.repeats} | {a['mac_ratio=0.5']['median']:.2f} s | < 5 s |",
        f"| `approximate(beta=0.1)`, median of {args.repeats} | {a['beta=0.1']['median']:.2f} s | < 5 s |",
        f"| `noise_gains`, {args.samples} clean samples | {n['clean_inputs']:.1f} s | |",
        f"| `noise_gains`, {args.samples} PGD-10 samples | {n['pgd10_eps8_255']:.1f} s | < 300 s |",
        "",
        f"PGD itself takes {100 * n['pgd_share']:.0f} % of the `noise_gains` time. The public "
        "reference code's loop (batch of one, one backward pass per class pair), timed on "
        f"{args.reference_samples} samples, takes {n['reference_loop_s_per_sample']:.2f} s per "
        f"sample: {n['speedup_over_reference_loop']:.1f}x slower than `noise_gains`.",
    ]  # fmt: skip
    (RESULTS / "core-speed-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
