"""Where a streaming frame's time goes on an NVIDIA GPU: a CUPTI kernel trace of live frames.

Builds the full-size random-weight model (as `ppchat bench --config 7b`), times `--frames` frames
without a profiler, then records `--trace` one-sync frames and `--trace` phase-split frames under
PyTorch's profiler (CUPTI sees every kernel of the process, MLX's included). For each window (a whole
frame, or one phase) it reports the wall time, the number of GPU kernels, the GPU busy time (union of
kernel intervals), and the CUDA runtime/driver calls made in it, plus the kernels that cost most.
Needs MLX's CUDA build and PyTorch in the same Python (the lent GPU machine has both).

    python3 benchmarks/trace_frame.py OUT_DIR NAME [--quantize 4|8|none] [--group-size N]
                                       [--frames 200] [--trace 10] [--save-trace]

MLX's CUDA settings (MLX_USE_CUDA_GRAPHS, MLX_MAX_OPS_PER_BUFFER, ...) come from the environment and are
recorded in the output.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_device import install_namespace

MLX_SETTINGS = ("MLX_USE_CUDA_GRAPHS", "MLX_MAX_OPS_PER_BUFFER", "MLX_MAX_MB_PER_BUFFER",
                "MLX_CUDA_GRAPH_CACHE_SIZE", "MLX_CUDA_USE_CUDNN_SDPA")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return 0.0 if n == 0 else (ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2)


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _kernel_name(name: str) -> str:
    return name.split("<")[0].split("(")[0][:90]


def summarise(trace: dict) -> dict:
    """Per window label: medians over windows of wall, kernel count, GPU busy; kernel and API tables."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    kernels = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    api = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    windows = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ppchat:")]
    per_label: dict[str, dict] = defaultdict(lambda: {"wall_us": [], "kernels": [], "busy_us": [],
                                                      "kernel_sum_us": [], "names": defaultdict(lambda: [0, 0.0]),
                                                      "api": defaultdict(lambda: [0, 0.0]), "windows": 0})
    for w in windows:
        label = w["name"].split(":", 1)[1]
        lo, hi = w["ts"], w["ts"] + w["dur"]
        ks = [k for k in kernels if lo <= k["ts"] <= hi]
        calls = [a for a in api if lo <= a["ts"] <= hi]
        entry = per_label[label]
        entry["windows"] += 1
        entry["wall_us"].append(w["dur"])
        entry["kernels"].append(len(ks))
        entry["busy_us"].append(_union([(k["ts"], k["ts"] + k["dur"]) for k in ks]))
        entry["kernel_sum_us"].append(sum(k["dur"] for k in ks))
        for k in ks:
            slot = entry["names"][_kernel_name(k["name"])]
            slot[0] += 1
            slot[1] += k["dur"]
        for a in calls:
            slot = entry["api"][a["name"]]
            slot[0] += 1
            slot[1] += a["dur"]
    out = {}
    for label, e in per_label.items():
        n = e["windows"]
        names = sorted(e["names"].items(), key=lambda kv: -kv[1][1])
        calls = sorted(e["api"].items(), key=lambda kv: -kv[1][1])
        out[label] = {
            "windows": n,
            "wall_ms": _median(e["wall_us"]) / 1e3,
            "kernels": _median(e["kernels"]),
            "gpu_busy_ms": _median(e["busy_us"]) / 1e3,
            "kernel_sum_ms": _median(e["kernel_sum_us"]) / 1e3,
            "top_kernels": [{"name": k, "per_window": c / n, "ms_per_window": t / n / 1e3} for k, (c, t) in names[:25]],
            "api_calls": [{"name": k, "per_window": c / n, "ms_per_window": t / n / 1e3} for k, (c, t) in calls[:15]],
        }
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("name")
    parser.add_argument("--model", help="a model (demo, folder) instead of the random 7B, for a dry run")
    parser.add_argument("--quantize", choices=("4", "8", "none"), default="4")
    parser.add_argument("--group-size", type=int)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--trace", type=int, default=10)
    parser.add_argument("--save-trace", action="store_true")
    parser.add_argument("--conversations", type=int, default=0,
                        help="trace the batched frame of N conversations (engine.batch; no phase split)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    install_namespace()

    import mlx.core as mx
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from ppchat.engine.bench import BenchOptions, _input_frames, _stats, _voice_prompt, build_model
    from ppchat.engine.pipeline import ModelPipeline
    from ppchat.engine.prompts import resolve_prompt
    from ppchat.sampling import Sampling

    quantize = None if args.quantize == "none" else int(args.quantize)
    options = BenchOptions(config=None if args.model else "7b", model=args.model or "demo",
                           quantize=quantize, group_size=args.group_size)
    t0 = time.perf_counter()
    model = build_model(options)
    load_s = time.perf_counter() - t0
    batched = args.conversations > 0
    if batched:
        from ppchat.engine.batch import BatchPipeline

        pipeline = BatchPipeline(model, args.conversations, Sampling(seed=0))
    else:
        pipeline = ModelPipeline(model, Sampling(seed=0), phase_timing=False)
    voice = _voice_prompt(model.lm, 125, 0)
    frames = _input_frames(pipeline.frame_size, pipeline.sample_rate, 64, 0)
    t0 = time.perf_counter()
    if batched:
        for row in range(args.conversations):
            pipeline.join(voice, resolve_prompt("assistant")[1], seed=row)
    else:
        pipeline.start(voice, resolve_prompt("assistant")[1])
    prefill_s = time.perf_counter() - t0

    def one_frame(i: int) -> None:
        if batched:
            pipeline.run_frame({row: frames[(i + row) % 64] for row in range(args.conversations)})
        else:
            pipeline.run_frame(frames[i % 64])

    for i in range(30):
        one_frame(i)

    def run(count: int, phases: bool, label: str | None) -> list[float]:
        if not batched:
            pipeline.phase_timing = pipeline.gen.phase_timing = phases
        walls = []
        for i in range(count):
            t = time.perf_counter()
            if label is None:
                one_frame(i)
            else:
                with record_function(f"ppchat:{label}"):
                    one_frame(i)
            walls.append((time.perf_counter() - t) * 1e3)
        return walls

    timed = run(args.frames, False, None)
    timed_phases = [] if batched else run(max(args.frames // 4, 10), True, None)

    # In phase mode every mx.eval is one phase, in this order.
    phase_names = iter(())
    real_eval = mx.eval

    def labelled_eval(*a, **k):
        label = next(phase_names, None)
        if label is None:
            return real_eval(*a, **k)
        with record_function(f"ppchat:{label}"):
            return real_eval(*a, **k)

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        torch.cuda.init()
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        run(args.trace, False, "frame")
        mx.eval = labelled_eval
        try:
            for _ in range(0 if batched else args.trace):
                phase_names = iter(("encode", "temporal", "depformer", "decode"))
                run(1, True, "frame_phases")
        finally:
            mx.eval = real_eval
    path = args.out / f"{args.name}.trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    if args.save_trace:
        with gzip.open(args.out / f"{args.name}.trace.json.gz", "wt") as f:
            json.dump(trace, f)
    path.unlink()

    result = {
        "name": args.name,
        "mlx_version": mx.__version__,
        "device": str(mx.default_device()),
        "settings": {k: os.environ.get(k) for k in MLX_SETTINGS},
        "quantization": model.info.quantization,
        "group_size": model.info.group_size,
        "load_s": load_s,
        "prefill_cold_s": prefill_s,
        "peak_bytes": mx.get_peak_memory(),
        "one_sync_ms": _stats(timed),
        "conversations": args.conversations,
        "phase_mode_ms": _stats(timed_phases) if timed_phases else None,
        "trace": summarise(trace),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    t = result["one_sync_ms"]
    print(f"{args.name}: one-sync median {t['median']:.2f} p95 {t['p95']:.2f} max {t['max']:.2f} ms; "
          f"peak {result['peak_bytes'] / 1e9:.2f} GB; settings {result['settings']}")
    for label, s in result["trace"].items():
        print(f"  {label:<13} wall {s['wall_ms']:7.2f} ms  kernels {s['kernels']:6.0f}  gpu busy {s['gpu_busy_ms']:6.2f} ms")
        for k in s["top_kernels"][:6]:
            print(f"      {k['ms_per_window']:7.3f} ms  x{k['per_window']:6.1f}  {k['name']}")
        for a in s["api_calls"][:5]:
            print(f"      api {a['ms_per_window']:7.3f} ms  x{a['per_window']:6.1f}  {a['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
