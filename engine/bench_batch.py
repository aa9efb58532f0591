"""`ppchat bench --conversations N`: N conversations in one batched step (`engine.batch`).

The N conversations join one by one during the warm-up, each with its own seed, voice prompt (a
`.pt`-style embedding prompt) and role prompt (the presets in turn), then every measured frame steps
all of them together. A frame is the whole batched step (Mimi encode, LM, depformer, Mimi decode for
every row, one synchronisation); it is late when it takes longer than the 80 ms a frame lasts, for
every conversation in it. With `churn`, a conversation leaves and a new one joins every `churn`
frames: the join's conditioning runs between two frames, and the report gives its time (the pause
the other conversations see) apart from the frame times.
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from ppchat.constants import FRAME_MS
from ppchat.engine.batch import BatchPipeline
from ppchat.engine.bench import (
    BenchOptions,
    _input_frames,
    _stats,
    _voice_prompt,
    build_model,
    device_description,
    memory_description,
    model_description,
)
from ppchat.engine.prompts import PRESETS
from ppchat.sampling import Sampling


def run_batch_bench(options: BenchOptions) -> dict:
    n = options.conversations
    if n < 1 or options.frames < 1 or options.warmup < 0 or options.churn < 0:
        raise ValueError("conversations and frames must be at least 1, warmup and churn not negative")
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    model = build_model(options)
    load_seconds = time.perf_counter() - t0
    load_peak = mx.get_peak_memory()

    pipeline = BatchPipeline(model, n, Sampling(seed=options.seed), compile=options.compile)
    prompts = list(PRESETS.values())
    audio = _input_frames(pipeline.frame_size, pipeline.sample_rate, 64, options.seed)
    joined = 0
    join_seconds: list[float] = []

    def join() -> None:
        nonlocal joined
        voice = _voice_prompt(model.lm, options.voice_frames, options.seed + joined)
        started = time.perf_counter()
        pipeline.join(voice, prompts[joined % len(prompts)], seed=options.seed + joined)
        join_seconds.append(time.perf_counter() - started)
        joined += 1

    def frame(i: int) -> float:
        _, ms = pipeline.run_frame({row: audio[(i + 7 * row) % len(audio)] for row in pipeline.rows})
        return ms

    # Warm-up: conversations join one by one (the first join also traces and compiles everything).
    stagger = max(1, options.warmup // n)
    for i in range(max(options.warmup, n * stagger)):
        if joined < n and i % stagger == 0:
            join()
        frame(i)
    while joined < n:
        join()
    cold_join, warm_joins = join_seconds[0], join_seconds[1:]

    for stats in pipeline.rows.values():  # per-conversation counts cover the measured frames only
        stats.frames, stats.late, stats.frame_ms = 0, 0, []
    mx.reset_peak_memory()
    active_start = mx.get_active_memory()
    times: list[float] = []
    churn_joins: list[float] = []
    finished = []
    started = time.perf_counter()
    for i in range(options.frames):
        if options.churn and i and i % options.churn == 0:
            oldest = min(pipeline.rows, key=lambda row: pipeline.rows[row].conversation)
            finished.append(pipeline.leave(oldest))
            join()
            churn_joins.append(join_seconds[-1])
        times.append(frame(i))
    elapsed = time.perf_counter() - started
    active_end = mx.get_active_memory()

    rows = finished + list(pipeline.rows.values())
    total = _stats(times)
    return {
        "command": "ppchat bench",
        "mlx_version": mx.__version__,
        **device_description(),
        "model": model_description(options, model, pipeline.depformer_steps),
        "mode": "batched",
        "conversations": n,
        "compiled": {"lm": pipeline.lm.compile, "mimi": model.mimi.compile_streaming},
        "frames": options.frames,
        "warmup": options.warmup,
        "frame_ms": FRAME_MS,
        "load_seconds": load_seconds,
        "timings_ms": {"total": total},
        "conversation_frames_per_second": n * options.frames / (elapsed - sum(churn_joins)),
        "real_time_factor": total["mean"] / FRAME_MS,
        "late_frames": int(sum(t > FRAME_MS for t in times)),
        "joins": {
            "cold_seconds": cold_join,
            "warm_seconds": _stats(warm_joins) if warm_joins else None,
            "churn": options.churn,
            "churn_seconds": _stats(churn_joins) if churn_joins else None,
        },
        "per_conversation": [
            {"conversation": r.conversation, "joined_frame": r.joined_frame, "frames": r.frames, "late": r.late,
             "prefill_seconds": r.prefill_seconds,
             "p99_ms": float(np.percentile(r.frame_ms, 99)) if r.frame_ms else None}
            for r in rows
        ],
        "memory": memory_description(load_peak, active_start, active_end),
    }


def format_batch_report(result: dict) -> str:
    gib = 1024**3
    m, t, j = result["model"], result["timings_ms"]["total"], result["joins"]
    lines = [
        f"ppchat bench — MLX {result['mlx_version']} on {result['device']} ({result.get('device_name', '?')}, "
        f"{result['backend']})",
        f"model {m['source']}  quantization {m['quantization']}  KV cache {m['kv_bits']} bit  LM dtype {m['lm_dtype']}  "
        f"depformer steps {m['depformer_steps']}",
        f"{result['conversations']} conversations in one batched step, {result['frames']} frames after "
        f"{result['warmup']} warm-up",
        "",
        f"{'':<10} {'median':>9} {'p95':>9} {'p99':>9} {'max':>9}   (ms per batched 80 ms frame)",
        f"{'frame':<10} {t['median']:9.2f} {t['p95']:9.2f} {t['p99']:9.2f} {t['max']:9.2f}",
        "",
        f"late frames {result['late_frames']}   conversation-frames per second "
        f"{result['conversation_frames_per_second']:.1f}   real-time factor {result['real_time_factor']:.3f}",
        f"join (prompt conditioning) {j['cold_seconds']:.3f} s first"
        + (f", {j['warm_seconds']['median']:.3f} s median after" if j["warm_seconds"] else "")
        + (f"; churn every {j['churn']} frames: {j['churn_seconds']['median']:.3f} s median pause"
           if j["churn_seconds"] else ""),
        "conversation  joined  frames  late  p99 ms",
    ]
    for r in result["per_conversation"]:
        p99 = f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else "-"
        lines.append(f"{r['conversation']:>12}  {r['joined_frame']:>6}  {r['frames']:>6}  {r['late']:>4}  {p99:>6}")
    mem = result["memory"]
    lines.append(f"memory peak {mem['peak_bytes'] / gib:.2f} GiB   active growth {mem['active_growth_bytes'] / 2**20:.2f} MiB")
    return "\n".join(lines)
