"""`ppchat bench`: time the full streaming step (Mimi encode + LM call + Mimi decode) of a model.

The model is a real checkpoint (`demo`, a folder, a hub id) or, with `config="7b"`, the full-size
PersonaPlex architecture with random weights, built directly in MLX (bf16, quantised layer by layer
before anything dense is materialised) for machines without the checkpoint. The run conditions the
model as a conversation start does (a `.pt`-style voice prompt and a role prompt, batched prefill),
runs warm-up frames, then `frames` measured frames of noisy speech-band audio, and reports per-phase
latency percentiles, throughput, prefill and load time, and memory (peak, and active memory sampled
along the run to show it stays flat).

Default mode synchronises once per frame and times the whole frame; `phases=True` synchronises
between the phases to split the time (slower, and the split is only meaningful in that mode).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ppchat.constants import DEPFORMER_STEPS, FRAME_MS
from ppchat.engine.pipeline import ModelPipeline
from ppchat.engine.prompts import resolve_prompt
from ppchat.models.generator import VoiceEmbeddings
from ppchat.models.lm import LM, LMConfig
from ppchat.models.loader import (
    DEFAULT_GROUP_SIZE,
    LoadedModel,
    ModelInfo,
    load_model,
    quantizable,
    resolve_kv_bits,
)
from ppchat.models.mimi import Mimi, MimiConfig
from ppchat.sampling import Sampling

PHASES = ("encode", "temporal", "depformer", "decode", "total")
CONFIGS = ("7b",)
MEMORY_SAMPLES = 20


@dataclass(frozen=True)
class BenchOptions:
    """What to build and how long to run. `quantize` is None (checkpoint dtype / bf16), 4 or 8."""

    model: str = "demo"
    config: str | None = None
    quantize: int | None = None
    group_size: int | None = None
    kv_bits: int | None | str = "auto"
    frames: int = 200
    warmup: int = 20
    phases: bool = False
    compile: bool | None = None
    voice_frames: int = 125
    prompt: str = "assistant"
    seed: int = 0
    cache_root: str | None = None
    conversations: int = 0
    """0: one conversation through `ModelPipeline`; N: N conversations in one batched step (`bench_batch`)."""
    churn: int = 0
    """With `conversations`: every `churn` measured frames the longest-running conversation leaves and
    a new one joins (0: none)."""


# ------------------------------------------------------------------------------------------ model


def _materialise(module: nn.Module) -> None:
    """Evaluate a lazily built model one leaf module at a time, so that only one dense weight
    exists at once before it is quantised (the peak stays near the final size)."""
    leaves = tree_flatten(module.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module))
    for _, leaf in leaves:
        mx.eval(leaf.parameters())
    mx.eval(module.parameters())


def _random_mimi(config: MimiConfig, compile_streaming: bool | None, seed: int) -> Mimi:
    """Mimi with random weights at the scales of a trained codec (so codes and audio vary)."""
    mimi = Mimi(config, compile_streaming=compile_streaming)
    flat = tree_flatten(mimi.parameters())
    keys = mx.random.split(mx.random.key(seed), len(flat))
    params = []
    for index, (name, value) in enumerate(flat):
        if name.endswith(".bias"):
            new = mx.zeros(value.shape)
        elif ".norm" in name:
            new = mx.ones(value.shape)
        elif "layer_scale" in name:
            new = mx.full(value.shape, 0.01)
        else:
            fan_in = int(np.prod(value.shape[1:])) if value.ndim > 1 else 1
            std = 1.0 if name.endswith(".embedding") else fan_in**-0.5
            new = mx.random.normal(value.shape, key=keys[index]) * std
        params.append((name, new.astype(value.dtype)))
    mimi.update(tree_unflatten(params))
    mx.eval(mimi.parameters())
    return mimi


def build_random_model(
    lm_config: LMConfig,
    mimi_config: MimiConfig,
    quantize: int | None,
    *,
    group_size: int | None = None,
    kv_bits: int | None | str = "auto",
    dtype: mx.Dtype = mx.bfloat16,
    depformer_steps: int = DEPFORMER_STEPS,
    compile_streaming: bool | None = None,
    seed: int = 0,
) -> LoadedModel:
    """A model of the given architecture with random weights, built in memory (no checkpoint)."""
    from ppchat.models.demo import demo_tokenizer_model
    from ppchat.models.tokenizer import TextTokenizer

    started = time.perf_counter()
    mx.random.seed(seed)
    lm = LM(lm_config, dtype=dtype, depformer_steps=depformer_steps)  # lazy: nothing allocated yet
    group = (group_size or DEFAULT_GROUP_SIZE[quantize]) if quantize else None
    if quantize:
        nn.quantize(lm, group, quantize, class_predicate=quantizable(group))
    _materialise(lm)
    kv_bits = resolve_kv_bits(kv_bits, quantize)
    mimi = _random_mimi(mimi_config, compile_streaming, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokenizer.model"
        path.write_bytes(demo_tokenizer_model())
        tokenizer = TextTokenizer(path)
    info = ModelInfo(
        source="random",
        is_demo=False,
        lm_dtype=str(dtype).split(".")[-1],
        quantization=f"q{quantize}" if quantize else "none",
        group_size=group,
        kv_bits=kv_bits,
        depformer_steps=lm.depformer.steps,
        quantized_cache=None,
        cache_hit=False,
        load_seconds=time.perf_counter() - started,
    )
    # No checkpoint folder backs a random model; the pipeline needs only mimi, lm and tokenizer.
    return LoadedModel(mimi=mimi, lm=lm, tokenizer=tokenizer, config=None, info=info, voices_dir=None)


def build_model(options: BenchOptions) -> LoadedModel:
    if options.config is not None:
        if options.config != "7b":
            raise ValueError(f"unknown config {options.config!r}; choose one of {CONFIGS}")
        return build_random_model(
            LMConfig.personaplex_7b(), MimiConfig.personaplex(), options.quantize,
            group_size=options.group_size, kv_bits=options.kv_bits, seed=options.seed,
            compile_streaming=options.compile,
        )
    model = load_model(options.model, quantize=options.quantize, group_size=options.group_size,
                       kv_bits=options.kv_bits, cache_root=options.cache_root,
                       depformer_steps=DEPFORMER_STEPS, show_progress=False)
    if options.compile is not None:
        model.mimi.compile_streaming = options.compile
    return model


# ------------------------------------------------------------------------------------------- run


def _voice_prompt(lm: LM, frames: int, seed: int) -> VoiceEmbeddings:
    """A `.pt`-style voice prompt of `frames` frames: random input embeddings and a valid token ring."""
    rng = np.random.default_rng(seed)
    config = lm.config
    embeddings = mx.array(rng.standard_normal((frames - 1, config.dim)).astype(np.float32)).astype(lm.dtype)
    ring = rng.integers(0, config.card, size=(config.num_codebooks, config.max_delay + 3))
    ring[0] = rng.integers(0, config.text_card, size=ring.shape[1])
    return VoiceEmbeddings(embeddings, ring)


def _input_frames(frame_size: int, sample_rate: int, count: int, seed: int) -> np.ndarray:
    """Speech-band test audio: a wandering tone plus noise, [count, frame_size] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(count * frame_size) / sample_rate
    tone = 0.2 * np.sin(2 * np.pi * (200 + 150 * np.sin(2 * np.pi * 0.3 * t)) * t)
    pcm = tone + 0.03 * rng.standard_normal(t.shape)
    return pcm.astype(np.float32).reshape(count, frame_size)


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "mean": float(a.mean()),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "min": float(a.min()),
    }


def memory_description(load_peak: int, active_start: int, active_end: int) -> dict:
    """The memory part of a bench result: peaks while loading and streaming, and what streaming kept."""
    return {
        "peak_bytes": max(load_peak, mx.get_peak_memory()),
        "load_peak_bytes": load_peak,
        "streaming_peak_bytes": mx.get_peak_memory(),
        "active_start_bytes": active_start,
        "active_end_bytes": active_end,
        "active_growth_bytes": active_end - active_start,
    }


def model_description(options, model, depformer_steps: int) -> dict:
    """The model part of a bench result: what ran, quantised how, and how big its LM weights are."""
    return {
        "source": options.config and f"random {options.config}" or options.model,
        "quantization": model.info.quantization,
        "group_size": model.info.group_size,
        "kv_bits": model.info.kv_bits or 16,
        "lm_dtype": model.info.lm_dtype,
        "depformer_steps": depformer_steps,
        "lm_weight_bytes": sum(v.nbytes for _, v in tree_flatten(model.lm.parameters())),
    }


def device_description() -> dict[str, str]:
    device = mx.default_device()
    info = {}
    try:
        info = {k: str(v) for k, v in mx.device_info().items() if k in ("device_name", "architecture")}
    except (AttributeError, RuntimeError):
        pass
    backend = "cuda" if mx.cuda.is_available() else "metal" if mx.metal.is_available() else "cpu"
    return {"device": str(device), "backend": backend if device == mx.gpu else "cpu", **info,
            "host": platform.node(), "cpus": str(os.cpu_count())}


def run_bench(options: BenchOptions) -> dict:
    """Build, prefill and stream; returns the JSON-ready result (see `format_report`)."""
    if options.frames < 1 or options.warmup < 0:
        raise ValueError("frames must be at least 1 and warmup not negative")
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    model = build_model(options)
    load_seconds = time.perf_counter() - t0
    load_peak = mx.get_peak_memory()

    sampling = Sampling(seed=options.seed)
    pipeline = ModelPipeline(model, sampling, phase_timing=options.phases)
    if options.compile is not None:
        pipeline.gen.compile = options.compile
    voice = _voice_prompt(model.lm, options.voice_frames, options.seed)
    _, prompt_text = resolve_prompt(options.prompt)
    frames = _input_frames(pipeline.frame_size, pipeline.sample_rate, 64, options.seed)

    cold = pipeline.start(voice, prompt_text)
    for i in range(options.warmup):
        pipeline.run_frame(frames[i % len(frames)])
    # A second start is what a new conversation costs once the kernels exist.
    warm = pipeline.start(voice, prompt_text)
    for i in range(min(options.warmup, 4)):
        pipeline.run_frame(frames[i % len(frames)])

    mx.reset_peak_memory()
    active_start = mx.get_active_memory()
    every = max(1, options.frames // MEMORY_SAMPLES)
    memory_trace: list[list[int]] = []
    timings: dict[str, list[float]] = {p: [] for p in PHASES}
    started = time.perf_counter()
    for i in range(options.frames):
        t = time.perf_counter()
        _, _, frame_timings = pipeline.run_frame(frames[i % len(frames)])
        wall = (time.perf_counter() - t) * 1e3
        timings["total"].append(wall)
        if options.phases:
            for phase in PHASES[:-1]:
                timings[phase].append(frame_timings[phase])
        if (i + 1) % every == 0 or i + 1 == options.frames:
            memory_trace.append([i + 1, mx.get_active_memory()])
    elapsed = time.perf_counter() - started
    active_end = mx.get_active_memory()

    total = _stats(timings["total"])
    return {
        "command": "ppchat bench",
        "mlx_version": mx.__version__,
        **device_description(),
        "model": model_description(options, model, model.info.depformer_steps),
        "mode": "phases" if options.phases else "one-sync",
        "compiled": {"lm": pipeline.gen.compile, "mimi": model.mimi.compile_streaming},
        "frames": options.frames,
        "warmup": options.warmup,
        "frame_ms": FRAME_MS,
        "load_seconds": load_seconds,
        "prefill": {
            "voice_frames": warm.voice_frames,
            "prompt_tokens": warm.prompt_tokens,
            "calls": warm.calls,
            "seconds": warm.seconds,
            "cold_seconds": cold.seconds,
        },
        "timings_ms": {p: _stats(v) for p, v in timings.items() if v},
        "frames_per_second": options.frames / elapsed,
        "real_time_factor": total["mean"] / FRAME_MS,
        "real_time_factor_median": total["median"] / FRAME_MS,
        "late_frames": int(sum(v > FRAME_MS for v in timings["total"])),
        "memory": {**memory_description(load_peak, active_start, active_end), "active_trace": memory_trace},
    }


def format_report(result: dict) -> str:
    """A human-readable table of `run_bench`'s result."""
    gib = 1024**3
    m, mem, pre = result["model"], result["memory"], result["prefill"]
    lines = [
        f"ppchat bench — MLX {result['mlx_version']} on {result['device']} ({result.get('device_name', '?')}, "
        f"{result['backend']})",
        f"model {m['source']}  quantization {m['quantization']}  KV cache {m['kv_bits']} bit  LM dtype {m['lm_dtype']}  "
        f"depformer steps {m['depformer_steps']}  LM weights {m['lm_weight_bytes'] / gib:.2f} GiB",
        f"mode {result['mode']}  compiled lm={result['compiled']['lm']} mimi={result['compiled']['mimi']}  "
        f"frames {result['frames']} after {result['warmup']} warm-up",
        "",
        f"{'phase':<10} {'median':>9} {'p95':>9} {'p99':>9} {'max':>9}   (ms per 80 ms frame)",
    ]
    for phase, s in result["timings_ms"].items():
        lines.append(f"{phase:<10} {s['median']:9.2f} {s['p95']:9.2f} {s['p99']:9.2f} {s['max']:9.2f}")
    lines += [
        "",
        f"frames per second {result['frames_per_second']:.1f}   real-time factor {result['real_time_factor']:.3f} "
        f"(mean; median {result['real_time_factor_median']:.3f})   late frames {result['late_frames']}",
        f"prefill {pre['seconds']:.3f} s warm, {pre['cold_seconds']:.3f} s cold "
        f"({pre['voice_frames']} voice frames + {pre['prompt_tokens']} prompt tokens, {pre['calls']} calls)",
        f"model load {result['load_seconds']:.2f} s",
        f"memory peak {mem['peak_bytes'] / gib:.2f} GiB (load {mem['load_peak_bytes'] / gib:.2f}, streaming "
        f"{mem['streaming_peak_bytes'] / gib:.2f})   active {mem['active_start_bytes'] / gib:.3f} -> "
        f"{mem['active_end_bytes'] / gib:.3f} GiB over the run",
    ]
    return "\n".join(lines)
