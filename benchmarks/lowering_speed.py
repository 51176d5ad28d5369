"""Speed of each GDWS lowering on ONNX Runtime CPU: VGG-16-BN and PreActResNet-18 (CIFAR size).

For each model and MAC ratio, `approximate(mac_ratio=...)` makes the GDWS model, and
`export_onnx` exports the original model and the GDWS model in every lowering (plus `auto`,
chosen at each batch size), each checked for parity on real images. All graphs of one batch
size then run in interleaved rounds on ONNX Runtime (CPU provider, `--threads` threads), so
load from other processes hits every graph alike; medians and p90 of the latency are kept.

    speed-up   = throughput(GDWS graph) / throughput(original graph)
    MAC cut    = MACs(original model) / MACs(GDWS model), whole network, per image
    efficiency = speed-up / MAC cut  (1.0 = the MAC reduction fully realized as speed)

A second GDWS model per setting, "auto, time-priced", has the same MAC count but its kernels
allocated by measured layer time: `measure_layer_costs` at each batch size, then
`approximate(time_ratio=...)` at the time ratio whose model lands on the MAC-budgeted model's
MACs (bisection), lowered by `auto` for that batch.

Weights: no trained CIFAR weights exist offline, and freshly initialised convs have flat
per-channel spectra, on which the network-level MAC allocation degenerates (some layers keep
a single kernel). `--weights spectral` (default) therefore gives every KxK conv the shape of a
trained one: per input channel, random singular vectors with singular values decaying by
`--decay` per rank and channel scales drawn log-normally. Speed depends on the shapes and the
kernel counts only, not on the values. `--weights random` keeps the initialisation.

Run:  PYTHONPATH=. python benchmarks/lowering_speed.py [--models vgg16_bn preact_resnet18]
          [--ratios 0.25 0.5] [--batches 1 32] [--threads 2]
Writes benchmarks/results/lowering-speed-ort-cpu.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import command_line, spectral_weights
from gdws_export import approximate, create_model
from gdws_export.gdws.selection import count_macs
from gdws_export.lowering import export_onnx, measure_layer_costs
from gdws_export.lowering.auto import fastest_form
from gdws_export.runtimes import OrtRunner

RESULTS = Path(__file__).parent / "results"
IMAGES = Path(__file__).parent.parent / "tests" / "data" / "fashion_mnist_test_1k.npz"
LOWERINGS = ("gather", "uniform", "slots", "fold", "fold-2")
TIME_PRICED = "auto, time-priced"


def real_images(n: int) -> np.ndarray:
    """Fashion-MNIST test images, padded to 32 x 32, gray repeated over 3 channels."""
    x = np.load(IMAGES)["x"][:n].astype(np.float32) / 255.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))


def time_graphs(paths: dict[str, str], batch: int, threads: int, rounds: int) -> dict:
    """Interleaved rounds over all graphs, in a new random order each round; each sample
    averages enough runs to last >= 20 ms."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 3, 32, 32), dtype=np.float32)
    runners = {k: OrtRunner(p, threads=threads) for k, p in paths.items()}
    inner = {}
    for key, runner in runners.items():
        runner.activate()
        runner.predict(x)
        start = time.perf_counter()
        runner.predict(x)
        inner[key] = max(1, int(0.02 / (time.perf_counter() - start)))
    samples = {k: [] for k in runners}
    keys = list(runners)
    for _ in range(rounds):
        for key in rng.permutation(keys):
            runner = runners[key]
            start = time.perf_counter()
            for _ in range(inner[key]):
                runner.predict(x)
            samples[key].append((time.perf_counter() - start) / inner[key])
    for runner in runners.values():
        runner.deactivate()
    return {
        k: {"median_ms": 1e3 * float(np.median(v)), "p90_ms": 1e3 * float(np.percentile(v, 90)),
            "runs_per_sample": inner[k], "samples": len(v)}
        for k, v in samples.items()
    }  # fmt: skip


def run_config(name, ratio, args, images, workdir) -> dict:
    torch.manual_seed(args.seed)
    base = create_model(name)
    if args.weights == "spectral":
        spectral_weights(base, args.decay, args.seed)
    base.eval()
    shape = (3, 32, 32)
    start = time.perf_counter()
    gdws, report = approximate(base, mac_ratio=ratio, input_shape=shape)
    approx_s = time.perf_counter() - start
    macs = {"original": count_macs(base, shape), "gdws": count_macs(gdws, shape)}
    common = dict(input_shape=shape, exporter=args.exporter, parity_inputs=images,
                  threads=args.threads, metadata={"mac_ratio": ratio, "model": name})  # fmt: skip
    paths, exports = {}, {}

    def export(key, model, **kwargs):
        start = time.perf_counter()
        result = export_onnx(model, path=workdir / f"{name}-{ratio}-{key}.onnx", **common,
                             **kwargs)  # fmt: skip
        paths[key] = result.onnx_path
        exports[key] = {
            "seconds": time.perf_counter() - start,
            "parity_relative_diff": result.parity.relative_diff,
            "top1_agreement": result.parity.top1_agreement,
            "forms": result.forms, "shipped_macs": result.macs["shipped"],
            "network_plan": result.network_plan, "network_ms": result.network_ms,
            "layers": [{"name": lay.name, "form": lay.form, "median_ms": lay.median_ms,
                        "fastest_ms": lay.fastest_ms}
                       for lay in result.layers] if key.startswith("auto") else [],
        }  # fmt: skip
        print(f"  exported {key} in {exports[key]['seconds']:.1f} s", flush=True)

    export("original", base)
    for lowering in LOWERINGS:
        export(lowering, gdws, lowering=lowering)
    for batch in args.batches:
        export(f"auto@{batch}", gdws, lowering="auto", batch=batch, original=base,
               repeats=args.auto_repeats)  # fmt: skip
    # The same MACs, allocated by measured time instead: `approximate(time_ratio=...)` with
    # the layer costs of this batch, at the time ratio that lands on the MAC count above.
    time_priced = {}
    for batch in args.batches:
        start = time.perf_counter()
        costs = measure_layer_costs(base, shape, batch=batch, threads=args.threads)
        model, priced = match_macs(base, costs, macs["gdws"], shape)
        time_priced[str(batch)] = {
            "time_ratio": priced.time_ratio, "macs": count_macs(model, shape),
            "predicted_time_ratio": priced.predicted_time_ratio,
            "seconds": time.perf_counter() - start,
            "kernels_per_channel": {lay.name: lay.kernels_per_channel for lay in priced.layers
                                    if lay.status == "gdws"},
            "original_convs": [lay.name for lay in priced.layers if lay.status == "original"],
        }  # fmt: skip
        export(f"{TIME_PRICED}@{batch}", model, lowering="auto", batch=batch, original=base,
               repeats=args.auto_repeats)  # fmt: skip

    # "original (A/A)" is the original graph again, in its own session: the noise floor.
    paths["original (A/A)"] = paths["original"]
    timings = {}
    for threads in (args.threads, *args.extra_threads):
        for batch in args.batches:
            keys = ["original", "original (A/A)", *LOWERINGS, f"auto@{batch}",
                    f"{TIME_PRICED}@{batch}"]  # fmt: skip
            rounds = args.rounds_large if batch >= 8 else args.rounds_small
            timed = time_graphs({k: paths[k] for k in keys}, batch, threads, rounds)
            timings[f"{threads}x{batch}"] = timed
            print(f"  timed batch {batch} with {threads} threads", flush=True)
    return {
        "model": name, "mac_ratio": ratio, "approximate_seconds": approx_s, "macs": macs,
        "kernels": {lay.name: lay.kernels for lay in report.layers if lay.status == "gdws"},
        "exports": exports, "timings": timings, "time_priced": time_priced,
    }  # fmt: skip


def match_macs(base, costs, target_macs: int, shape):
    """The time-priced GDWS model with the most MACs not above `target_macs` (bisection on
    the time ratio), and its report."""
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        try:
            model, _ = approximate(base, time_ratio=mid, layer_costs=costs, input_shape=shape)
        except ValueError:  # below the cheapest allocation
            low = mid
            continue
        if count_macs(model, shape) > target_macs:
            high = mid
        else:
            low = mid
    return approximate(base, time_ratio=low, layer_costs=costs, input_shape=shape)


def summarize(config: dict) -> list[dict]:
    """One row per (batch, lowering): latency, throughput, speed-up, efficiency."""
    rows = []
    cut = config["macs"]["original"] / config["macs"]["gdws"]
    for setting, timing in config["timings"].items():
        threads, batch = map(int, setting.split("x"))
        base = timing["original"]["median_ms"]
        for key, t in timing.items():
            speedup = base / t["median_ms"]
            key_cut = 1.0 if key.startswith("original") else cut
            if key.startswith(TIME_PRICED):
                key_cut = config["macs"]["original"] / config["time_priced"][str(batch)]["macs"]
            rows.append({
                "model": config["model"], "mac_ratio": config["mac_ratio"], "threads": threads,
                "batch": batch, "lowering": key.split("@")[0], "median_ms": t["median_ms"],
                "p90_ms": t["p90_ms"], "images_per_s": batch / t["median_ms"] * 1e3,
                "speedup": speedup, "mac_cut": key_cut, "efficiency": speedup / key_cut,
            })  # fmt: skip
    return rows


def _choice(layer: dict) -> str:
    """The form `auto` picked for a layer: by the fastest round (results written before that
    existed: by the median)."""
    timed = layer.get("fastest_ms") or layer["median_ms"]
    return fastest_form(timed) if timed else layer["form"]


def _counts(forms) -> str:
    counts: dict[str, int] = {}
    for form in forms:
        counts[form] = counts.get(form, 0) + 1
    return ", ".join(f"{form} x{n}" for form, n in sorted(counts.items()))


def _spread(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high}"


def write_markdown(path: Path, data: dict, notes: str = "") -> None:
    lines = [
        "# GDWS lowering speed on ONNX Runtime CPU",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores (load average "
        f"{data['machine']['load_before']} before, {data['machine']['load_after']} after; the "
        f"benchmark itself keeps {data['args']['threads']} threads busy). onnxruntime {data['machine']['onnxruntime']}, "
        f"torch {data['machine']['torch']}, {data['args']['threads']} intra-op threads, "
        f"exporter {data['args']['exporter']}, weights {data['args']['weights']}"
        + (f" (decay {data['args']['decay']})" if data["args"]["weights"] == "spectral" else "")
        + f". Run took {data['seconds'] / 60:.1f} min.",
        "",
        "speed-up = throughput / original's; MAC cut = original / GDWS MACs per image (whole "
        "network); efficiency = speed-up / MAC cut. Medians (p90) of interleaved rounds in random "
        "order. `original (A/A)` is the original graph again in its own session: how far two "
        "identical graphs differ here, the noise floor. `auto` rows at other thread counts than "
        f"{data['args']['threads']} show the graph `auto` chose for {data['args']['threads']}. "
        f"`{TIME_PRICED}` is a second GDWS model with the same MAC count, its kernels allocated "
        "by measured layer time (`approximate(time_ratio=..., layer_costs=measure_layer_costs("
        "...))` at the time ratio that lands on the MAC-budgeted model's MACs), lowered by "
        "`auto`: the MAC cut is the same, so its efficiency shows what pricing by time buys.",
        "",
    ]
    for config in data["configs"]:
        macs = config["macs"]
        lines += [
            f"## {config['model']}, mac_ratio {config['mac_ratio']}",
            "",
            f"MACs per image: original {macs['original'] / 1e6:.1f} M, GDWS "
            f"{macs['gdws'] / 1e6:.1f} M (cut {macs['original'] / macs['gdws']:.2f}x).",
            "",
            "| threads | batch | lowering | latency ms, median (p90) | images/s | speed-up | "
            "efficiency |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in summarize(config):
            lines.append(
                f"| {row['threads']} | {row['batch']} | {row['lowering']} | {row['median_ms']:.2f} "
                f"({row['p90_ms']:.2f}) | {row['images_per_s']:.0f} | {row['speedup']:.2f}x | "
                f"{row['efficiency']:.2f} |"
            )
        for key, export in config["exports"].items():
            if key.startswith("auto"):
                per_layer = [_choice(lay) for lay in export["layers"]]
                checks = ", ".join(f"{k} {v[0]:.1f} ms" for k, v in export["network_ms"].items())
                lines += ["", f"{key}: per-layer choice {_counts(per_layer)}; whole-model check "
                          f"({checks}) shipped the {export['network_plan']!r} plan: "
                          f"{_counts(export['forms'].values())}."]  # fmt: skip
        for batch, priced in config.get("time_priced", {}).items():
            lines += ["", f"{TIME_PRICED}@{batch}: layer costs measured at batch {batch} "
                      f"({priced['seconds']:.0f} s with the allocation), time_ratio "
                      f"{priced['time_ratio']:.3f} (predicted conv time {priced['predicted_time_ratio']:.2f}"
                      f" of the original's), {priced['macs'] / 1e6:.1f} M MACs (cut "
                      f"{macs['original'] / priced['macs']:.2f}x), original convs kept: "
                      f"{len(priced['original_convs'])}; kernels per channel: "
                      + "; ".join(f"{name} " + _spread(counts) for name, counts in
                                  priced["kernels_per_channel"].items()) + "."]  # fmt: skip
        worst = max(e["parity_relative_diff"] for e in config["exports"].values())
        lines += ["", f"Parity of every graph on 16 real images: max relative diff {worst:.1e}, "
                  "top-1 agreement 100 %.", ""]  # fmt: skip
    path.write_text("\n".join(lines) + "\n" + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16_bn", "preact_resnet18"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2, help="for auto and the main timings")
    parser.add_argument(
        "--extra-threads", nargs="*", type=int, default=[1],
        help="also time every graph (auto as chosen for --threads) with these thread counts",
    )  # fmt: skip
    parser.add_argument("--exporter", default="legacy", help="legacy is ~5x faster to export")
    parser.add_argument("--weights", choices=["spectral", "random"], default="spectral")
    parser.add_argument("--decay", type=float, default=0.6)
    parser.add_argument("--rounds-small", type=int, default=25, help="rounds at batch < 8")
    parser.add_argument("--rounds-large", type=int, default=9, help="rounds at batch >= 8")
    parser.add_argument("--auto-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--notes", type=Path, default=Path(__file__).parent / "lowering_speed_notes.md",
        help="markdown appended to the results (the analysis)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "lowering-speed-ort-cpu")
    parser.add_argument(
        "--render", type=Path, default=None,
        help="only rewrite the markdown from this results JSON (and --notes), measuring nothing",
    )  # fmt: skip
    args = parser.parse_args()
    if args.render is not None:
        notes = args.notes.read_text() if args.notes.exists() else ""
        write_markdown(args.render.with_suffix(".md"), json.loads(args.render.read_text()), notes)
        return
    torch.set_num_threads(args.threads)
    import onnxruntime

    start = time.perf_counter()
    data = {
        "command": command_line("lowering_speed.py", None),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                    "load_before": [round(x, 2) for x in os.getloadavg()]},
        "configs": [],
    }  # fmt: skip
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        data["machine"]["cpu"] = names[0] if names else data["machine"]["cpu"]
    except OSError:
        pass
    images = real_images(16)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for ratio in args.ratios:
                print(f"{name} mac_ratio {ratio}", flush=True)
                data["configs"].append(run_config(name, ratio, args, images, Path(tmp)))
    data["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    data["seconds"] = time.perf_counter() - start
    data["rows"] = [row for config in data["configs"] for row in summarize(config)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{args.out}.json"), Path(f"{args.out}.md")
    json_path.write_text(json.dumps(data, indent=2))
    notes = args.notes.read_text() if args.notes and args.notes.exists() else ""
    write_markdown(md_path, data, notes)
    for row in data["rows"]:
        print(
            f"{row['model']:16s} r={row['mac_ratio']} t={row['threads']} b={row['batch']:2d} "
            f"{row['lowering']:14s} "
            f"{row['median_ms']:8.2f} ms  {row['speedup']:.2f}x  eff {row['efficiency']:.2f}"
        )
    print(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
