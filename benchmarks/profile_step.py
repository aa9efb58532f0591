"""Micro-experiments that split the streaming step's GPU time (one device call, one table).

Runs where ppchat is not installed (the repo folders are mapped onto `ppchat` as in run_device.py).
Every experiment builds random weights in memory; nothing is loaded. Sections:

  e  fixed cost per kernel: 300 chained elementwise ops / reductions, eager vs `mx.compile`
  f  does the pipeline's compiled graphs retrace? (trace counts over live frames)
  a  temporal step vs layers (1, 8, 32), ring size (16 vs 3000) and attention/mask variants
  b  ring-cache variants: the model's RingKVCache vs shared bool / additive / no mask, no attention
  c  one sampling call: top-k over 32000 / 2048 vs greedy
  d  Mimi: encode/decode and each part alone; single conv1d calls at batch 1
  p  the depformer column alone (8 steps), with and without sampling

    python3 benchmarks/profile_step.py [--small] [--only SECTIONS] [--json PATH]

`--small` shrinks every size so the script can be checked on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_device import install_namespace

install_namespace()

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402

from ppchat.models.kv_cache import RingKVCache  # noqa: E402
from ppchat.models.layers import merge_heads, split_qkv  # noqa: E402
from ppchat.models.transformer import TransformerLayer  # noqa: E402

ROWS: list[tuple[str, str, float, str]] = []


def record(section: str, name: str, ms: float, note: str = "") -> None:
    ROWS.append((section, name, ms, note))
    print(f"[{section}] {name:<58} {ms:9.3f} ms  {note}", flush=True)


def timed(fn: Callable[[], object], iters: int, warm: int = 3) -> float:
    """Median wall ms of `fn()` + `mx.eval` of its result (one host sync per call)."""
    for _ in range(warm):
        mx.eval(fn())
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        mx.eval(fn())
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


# ------------------------------------------------------------------------------- e: kernel cost


def section_e(small: bool, iters: int) -> None:
    n = 300
    x = mx.random.normal((1, 4096))
    mx.eval(x)

    def adds(x):
        for _ in range(n):
            x = x * 1.0001 + 0.5
        return x

    def reductions(x):
        for _ in range(n):
            x = x - mx.mean(x)
        return x

    w = mx.random.normal((256, 256)) * 0.06
    x256 = mx.random.normal((1, 256))
    mx.eval(w, x256)

    def matmuls(x):
        for _ in range(n):
            x = x @ w
        return x

    record("e", "empty sync (eval of one add)", timed(lambda: x + 1, iters))
    for label, fn, arg, kernels in (
        ("300 chained mul+add [1,4096]", adds, x, 2 * n),
        ("300 chained x - mean(x) [1,4096]", reductions, x, 2 * n),
        ("300 chained [1,256]@[256,256]", matmuls, x256, n),
    ):
        eager = timed(lambda: fn(arg), iters)
        compiled = mx.compile(fn)
        comp = timed(lambda: compiled(arg), iters)
        record("e", f"{label} eager", eager, f"{eager / kernels * 1e3:.1f} us/op ({kernels} ops)")
        record("e", f"{label} compiled", comp, f"{comp / kernels * 1e3:.1f} us/op")


# ------------------------------------------------------------------------------- f: retracing


def section_f(small: bool, iters: int) -> None:
    from ppchat.constants import PAD_ID
    from ppchat.engine.bench import _input_frames, _voice_prompt, build_random_model
    from ppchat.engine.pipeline import ModelPipeline
    from ppchat.models.lm import LMConfig
    from ppchat.models.mimi import MimiConfig
    from ppchat.sampling import Sampling

    lm_config = LMConfig(
        dim=256, num_heads=4, num_layers=2, hidden=512, context=100, max_period=10000.0, text_card=1000,
        card=2048, n_q=16, dep_q=16, delays=LMConfig.personaplex_7b().delays, depformer_dim=128,
        depformer_num_heads=4, depformer_num_layers=2, depformer_hidden=256, text_padding_id=PAD_ID,
    )
    model = build_random_model(lm_config, MimiConfig.personaplex(), None, dtype=mx.float32, compile_streaming=True)
    counts: dict[str, int] = {}

    def counting(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    lm, mimi = model.lm, model.mimi
    lm.forward_embeddings = counting("lm.forward_embeddings", lm.forward_embeddings)
    lm.depformer.sample_column = counting("depformer.sample_column", lm.depformer.sample_column)
    mimi.encoder.step = counting("mimi.encoder.step", mimi.encoder.step)
    mimi.decoder.step = counting("mimi.decoder.step", mimi.decoder.step)
    pipeline = ModelPipeline(model, Sampling(seed=0), phase_timing=False)
    pipeline.gen.compile = True
    voice = _voice_prompt(lm, 8, 0)
    pipeline.start(voice, "hello")
    frames = _input_frames(pipeline.frame_size, pipeline.sample_rate, 8, 0)
    for i in range(5):
        pipeline.run_frame(frames[i % 8])
    before = dict(counts)
    live = 20
    for i in range(live):
        pipeline.run_frame(frames[i % 8])
    for name in sorted(counts):
        extra = counts[name] - before.get(name, 0)
        record("f", f"traces of {name} in {live} live frames", float(extra), f"(after warm-up: {before.get(name, 0)})")


# --------------------------------------------------------------------- a/b: temporal transformer


class SharedRing:
    """Candidate bookkeeping: one position counter for all layers, keys written with `slice_update`
    at slot `offset % context`, one mask per step (bool or additive) shared by every layer."""

    def __init__(self, layers: int, heads: int, head_dim: int, context: int, dtype: mx.Dtype):
        self.context = context
        self.keys = [mx.zeros((1, heads, context, head_dim), dtype=dtype) for _ in range(layers)]
        self.values = [mx.zeros((1, heads, context, head_dim), dtype=dtype) for _ in range(layers)]
        self.offset = mx.array(0, dtype=mx.int32)

    @property
    def state(self) -> list[mx.array]:
        return self.keys + self.values + [self.offset]

    @state.setter
    def state(self, arrays: list[mx.array]) -> None:
        n = len(self.keys)
        self.keys, self.values, self.offset = list(arrays[:n]), list(arrays[n : 2 * n]), arrays[-1]

    def key_positions(self) -> mx.array:
        """Absolute position held by each slot after writing position `offset` (-1: never written)."""
        end = self.offset + 1
        slot = mx.arange(self.context, dtype=mx.int32)
        pos = end - 1 - mx.remainder(end - 1 - slot, self.context)
        return mx.where(pos >= 0, pos, -1)

    def mask(self, kind: str, dtype: mx.Dtype) -> mx.array | None:
        if kind == "none":
            return None
        key_pos = self.key_positions()
        delta = self.offset - key_pos
        visible = (key_pos >= 0) & (delta >= 0) & (delta < self.context - 1)
        if kind == "bool":
            return visible[None]
        return mx.where(visible, mx.array(0, dtype), mx.array(-math.inf, dtype))[None]


def _random_layers(n: int, dim: int, heads: int, hidden: int, dtype: mx.Dtype, quant: int | None):
    layers = [TransformerLayer(dim, heads, hidden, 10000.0, 1e-8) for _ in range(n)]
    for layer in layers:
        layer.set_dtype(dtype)
        if quant:
            nn.quantize(layer, {4: 32, 8: 64}[quant], quant)  # the loader's group sizes
        mx.eval(layer.parameters())
    return layers


def _attn_block(layer, x, offset, attend):
    a = layer.self_attn
    h = layer.norm1(x)
    q, k, v = split_qkv(a.in_proj(h), a.num_heads)
    qk = mx.fast.rope(mx.stack([q, k]), a.head_dim, traditional=True, base=a.max_period, scale=1.0, offset=offset)
    out = attend(qk[0], qk[1], v)
    x = x + a.out_proj(merge_heads(out))
    return x + layer.gating(layer.norm2(x))


def temporal_variant(
    layers, variant: str, context: int, dtype: mx.Dtype, fill: int, iters: int, compile: bool = True
) -> float:
    """Median ms of one compiled decode step over `layers` with the given cache/attention variant."""
    a0 = layers[0].self_attn
    heads, head_dim = a0.num_heads, a0.head_dim
    dim = heads * head_dim
    x = (mx.random.normal((1, 1, dim)) * 0.5).astype(dtype)
    if variant == "ring (model code)":
        caches = [RingKVCache(1, heads, head_dim, context, dtype) for _ in layers]
        for c in caches:  # as after `fill` tokens (slot positions follow from the counter)
            c.offset = mx.array(fill, dtype=mx.int32)

        def step(state, x):
            per = len(caches[0].state)
            for i, c in enumerate(caches):
                c.state = state[per * i : per * (i + 1)]
            mask = caches[0].mask_for(1)
            for layer, c in zip(layers, caches):
                x = layer(x, c, mask)
            return x, [a for c in caches for a in c.state]

        state = [a for c in caches for a in c.state]
    else:
        ring = SharedRing(len(layers), heads, head_dim, context, dtype)
        ring.offset = mx.array(fill, dtype=mx.int32)
        kind = {"shared bool mask": "bool", "shared additive mask": "add", "no mask (lower bound)": "none",
                "no attention (lower bound)": "skip"}[variant]

        def step(state, x):
            ring.state = state
            mask = ring.mask(kind if kind != "skip" else "none", dtype)
            slot = mx.remainder(ring.offset, context).reshape(1)
            for i, layer in enumerate(layers):
                def attend(q, k, v, i=i):
                    if kind == "skip":
                        return v
                    ring.keys[i] = mx.slice_update(ring.keys[i], k, slot, axes=(2,))
                    ring.values[i] = mx.slice_update(ring.values[i], v, slot, axes=(2,))
                    return mx.fast.scaled_dot_product_attention(
                        q, ring.keys[i], ring.values[i], scale=layer.self_attn.scale, mask=mask)

                x = _attn_block(layer, x, ring.offset, attend)
            ring.offset = ring.offset + 1
            return x, ring.state

        state = ring.state
    compiled = mx.compile(step) if compile else step
    holder = {"state": state}

    def run():
        y, holder["state"] = compiled(holder["state"], x)
        return y, holder["state"]

    return timed(run, iters)


def sdpa_only(layers: int, heads: int, head_dim: int, context: int, mask_kind: str, dtype, iters: int) -> float:
    q = mx.random.normal((1, heads, 1, head_dim)).astype(dtype)
    keys = [mx.random.normal((1, heads, context, head_dim)).astype(dtype) for _ in range(layers)]
    vis = mx.arange(context) < context - 1
    mask = {"bool": vis[None, None], "add": mx.where(vis, 0.0, -math.inf).astype(dtype)[None, None], "none": None}[mask_kind]
    mx.eval(q, keys, vis)

    def f(q):
        out = q
        for k in keys:
            out = mx.fast.scaled_dot_product_attention(out, k, k, scale=0.1, mask=mask)
        return out

    c = mx.compile(f)
    return timed(lambda: c(q), iters)


def section_ab(small: bool, iters: int, dtype_name: str, quant: int | None) -> None:
    dtype = {"bf16": mx.bfloat16, "f32": mx.float32}[dtype_name]
    dim, heads, hidden, max_layers = (256, 4, 512, 4) if small else (4096, 32, 11264, 32)
    layer_counts = (1, 2, 4) if small else (1, 8, 32)
    big_ctx, fill = (300, 120) if small else (3000, 500)
    t = time.perf_counter()
    layers = _random_layers(max_layers, dim, heads, hidden, dtype, quant)
    print(f"built {max_layers} layers in {time.perf_counter() - t:.1f} s", flush=True)
    tag = f"{dtype_name}{'-q' + str(quant) if quant else ''}"
    for n in layer_counts:
        ms = temporal_variant(layers[:n], "ring (model code)", big_ctx, dtype, fill, iters)
        record("a", f"temporal step {tag}, {n} layers, ctx {big_ctx}, ring (model code)", ms, f"{ms / n:.3f} ms/layer")
    n = max_layers
    ms = temporal_variant(layers, "ring (model code)", big_ctx, dtype, fill, iters, compile=False)
    record("a", f"temporal step {tag}, {n} layers, ctx {big_ctx}, ring (model code), NOT compiled", ms)
    ms = temporal_variant(layers, "ring (model code)", 16, dtype, fill, iters)
    record("a", f"temporal step {tag}, {n} layers, ctx 16 (full ring), ring (model code)", ms)
    for variant in ("shared bool mask", "shared additive mask", "no mask (lower bound)", "no attention (lower bound)"):
        ms = temporal_variant(layers, variant, big_ctx, dtype, fill, iters)
        record("b", f"temporal step {tag}, {n} layers, ctx {big_ctx}, {variant}", ms)
    head_dim = dim // heads
    for ctx in (16, big_ctx):
        for kind in ("bool", "add", "none"):
            ms = sdpa_only(n, heads, head_dim, ctx, kind, dtype, iters)
            record("a", f"{n} x SDPA alone, ctx {ctx}, mask {kind}", ms, f"{ms / n * 1e3:.1f} us each")
    # Layer pieces alone (32 repetitions in one compiled graph) to find the per-layer kernels' cost.
    x = (mx.random.normal((1, 1, dim)) * 0.5).astype(dtype)
    pieces = {
        "RMSNorm (f32 reference form)": lambda layer, x: layer.norm1(x),
        "mx.fast.rms_norm": lambda layer, x: mx.fast.rms_norm(x, layer.norm1.weight, 1e-8),
        "in_proj matmul": lambda layer, x: layer.self_attn.in_proj(x)[..., :dim],
        "gated FFN": lambda layer, x: layer.gating(x),
        "rope of q and k, one call": lambda layer, x: mx.fast.rope(
            mx.stack(split_qkv(mx.concatenate([x, x, x], -1), heads)[:2]), dim // heads, traditional=True,
            base=10000.0, scale=1.0, offset=mx.array(7)).sum(0).reshape(1, 1, dim),
    }
    for name, piece in pieces.items():
        def chain(x, piece=piece):
            for layer in layers:
                x = piece(layer, x)
            return x

        c = mx.compile(chain)
        ms = timed(lambda: c(x), iters)
        record("a", f"{n} x {name} {tag}", ms, f"{ms / n * 1e3:.1f} us each")


# ------------------------------------------------------------------------------- c: sampling


def section_c(small: bool, iters: int) -> None:
    from ppchat.models.sampling import sample_token

    key = mx.random.key(0)
    for vocab, k, temp in ((32000, 25, 0.7), (2048, 250, 0.8)):
        logits = mx.random.normal((1, vocab)) * 3
        mx.eval(logits)
        for label, tk, tt in (("top-k", k, temp), ("greedy", k, 0.0), ("full categorical", 0, temp)):
            fn = mx.compile(lambda lg, key, tk=tk, tt=tt: sample_token(lg, tt, tk, key))
            ms = timed(lambda: fn(logits, key), iters)
            record("c", f"sample {label} over {vocab} (k={tk}, one call, compiled)", ms)

        def eight(lg, key, k=k, temp=temp):
            keys = mx.random.split(key, 8)
            return mx.stack([sample_token(lg + i, temp, k, keys[i]) for i in range(8)])

        fn = mx.compile(eight)
        ms = timed(lambda: fn(logits, key), iters)
        record("c", f"8 x sample top-k over {vocab} in one graph", ms, f"{ms / 8 * 1e3:.1f} us each")
        part = mx.compile(lambda lg, k=k: mx.argpartition(-lg, kth=k - 1, axis=-1)[..., :k])
        ms = timed(lambda: part(logits), iters)
        record("c", f"argpartition alone over {vocab} (k={k})", ms)


# ------------------------------------------------------------------------------- d: Mimi


def section_d(small: bool, iters: int) -> None:
    from ppchat.engine.bench import _random_mimi
    from ppchat.models.mimi import MimiConfig

    mimi = _random_mimi(MimiConfig.personaplex(), True, 0)
    pcm = mx.array(np.random.default_rng(0).standard_normal((1, 1, mimi.frame_size)).astype(np.float32) * 0.1)
    codes = mimi.encode_step(pcm)
    mx.eval(codes, mimi.streaming_state())
    record("d", "Mimi encode_step (compiled)", timed(lambda: (mimi.encode_step(pcm), mimi.streaming_state()), iters))
    record("d", "Mimi decode_step (compiled)", timed(lambda: (mimi.decode_step(codes), mimi.streaming_state()), iters))
    mimi.compile_streaming = False
    record("d", "Mimi encode_step (eager)", timed(lambda: (mimi.encode_step(pcm), mimi.streaming_state()), iters))
    record("d", "Mimi decode_step (eager)", timed(lambda: (mimi.decode_step(codes), mimi.streaming_state()), iters))

    def part_graph(part: str, fn: Callable[[mx.array], mx.array]):
        parts = (part,)

        def graph(state, x):
            mimi._set_state(parts, state)
            return fn(x), mimi._get_state(parts)

        compiled = mx.compile(graph)

        def run(x):
            y, state = compiled(mimi._get_state(parts), x)
            mimi._set_state(parts, state)
            return y, state

        return run

    latent_seanet = mimi.encoder.step(pcm.transpose(0, 2, 1))  # [1, 2, 512]
    latent_codes = mimi.downsample.step(mimi.encoder_transformer.step(latent_seanet))
    mx.eval(latent_seanet, latent_codes)
    up = mimi.upsample.step(mimi.quantizer.decode(codes))
    mx.eval(up)
    dec_latent = mimi.decoder_transformer.step(up)
    mx.eval(dec_latent)
    for label, part, fn, arg in (
        ("encode: SEANet encoder", "encoder", mimi.encoder.step, pcm.transpose(0, 2, 1)),
        ("encode: transformer (8 layers, 2 steps)", "encoder_transformer", mimi.encoder_transformer.step, latent_seanet),
        ("encode: downsample conv", "downsample", mimi.downsample.step, latent_seanet),
        ("decode: upsample convtr", "upsample", mimi.upsample.step, latent_codes),
        ("decode: transformer (8 layers, 2 steps)", "decoder_transformer", mimi.decoder_transformer.step, up),
        ("decode: SEANet decoder", "decoder", mimi.decoder.step, dec_latent),
    ):
        run = part_graph(part, fn)
        record("d", f"{label} (compiled)", timed(lambda: run(arg), iters))
    q_enc = mx.compile(mimi.quantizer.encode)
    record("d", "encode: quantizer (8 codebooks, compiled)", timed(lambda: q_enc(latent_codes), iters))
    q_dec = mx.compile(mimi.quantizer.decode)
    record("d", "decode: quantizer (compiled)", timed(lambda: q_dec(codes), iters))
    mimi.compile_streaming = True

    # Single convolutions at batch 1, 20 independent copies per evaluation.
    reps = 20
    for t, cin, cout, k, stride in ((1926, 1, 64, 7, 1), (1922, 64, 32, 3, 1), (1928, 64, 128, 8, 4),
                                    (18, 512, 512, 3, 1), (4, 512, 512, 4, 2)):
        x = mx.random.normal((1, t, cin))
        w = mx.random.normal((cout, k, cin)) * 0.1
        mx.eval(x, w)
        conv = mx.compile(lambda x: [mx.conv1d(x + i, w, stride=stride) for i in range(reps)])
        ms = timed(lambda: conv(x), iters)
        # The same product as im2col + one matmul.
        n_out = (t - k) // stride + 1
        idx = mx.array((np.arange(n_out)[:, None] * stride + np.arange(k)[None]).reshape(-1))
        wm = w.reshape(cout, k * cin).T

        def im2col(x):
            return [(x + i)[:, idx].reshape(1, n_out, k * cin) @ wm for i in range(reps)]

        mm = mx.compile(im2col)
        ms2 = timed(lambda: mm(x), iters)
        record("d", f"conv1d T={t} {cin}->{cout} k={k} s={stride}", ms / reps,
               f"im2col+matmul {ms2 / reps * 1e3:.1f} us")


# ------------------------------------------------------------------------------- p: depformer


def section_p(small: bool, iters: int, dtype_name: str) -> None:
    from ppchat.models.depformer import Depformer
    from ppchat.models.sampling import sample_token

    dtype = {"bf16": mx.bfloat16, "f32": mx.float32}[dtype_name]
    in_dim, dim, heads, layers, hidden = (256, 128, 4, 2, 256) if small else (4096, 1024, 16, 6, 2816)
    dep = Depformer(in_dim, dim, heads, layers, hidden, 8, 16, 2048, 32000, 1e-8)
    dep.set_dtype(dtype)
    mx.eval(dep.parameters())
    h = (mx.random.normal((1, 1, in_dim)) * 0.5).astype(dtype)
    text = mx.array([5], dtype=mx.int32)
    forced = mx.zeros((1, 8), dtype=mx.int32)
    forced_mask = mx.zeros((1, 8), dtype=mx.bool_)
    key = mx.random.key(0)
    for label, draw in (
        ("top-k 250 sampling", lambda lg, key: sample_token(lg, 0.8, 250, key)),
        ("greedy", lambda lg, key: sample_token(lg, 0.0, 250)),
    ):
        def column(h, key, draw=draw):
            keys = mx.random.split(key, 8)
            return dep.sample_column(h, text, forced, forced_mask, lambda lg, step: draw(lg, keys[step]), 8)[0]

        c = mx.compile(column)
        record("p", f"depformer column, 8 steps, {dtype_name}, {label}", timed(lambda: c(h, key), iters))

    def one_layer_pass(x):
        kv = dep.make_cache()
        for step in range(8):
            x = dep.layers[0](x, step, kv, 0)
        return x

    c = mx.compile(one_layer_pass)
    x = (mx.random.normal((1, 1, dim)) * 0.5).astype(dtype)
    ms = timed(lambda: c(x), iters)
    record("p", f"depformer layer 0 over 8 steps ({dtype_name})", ms, f"x{layers} layers = {ms * layers:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes, for checking on a CPU")
    parser.add_argument("--only", default="efabcdp", help="sections to run (letters)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "f32"))
    parser.add_argument("--quantize", type=int, default=None, choices=(4, 8))
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    print(f"MLX {mx.__version__} on {mx.default_device()}", flush=True)
    sections = {
        "e": lambda: section_e(args.small, args.iters),
        "f": lambda: section_f(args.small, args.iters),
        "a": lambda: section_ab(args.small, args.iters, args.dtype, args.quantize),
        "c": lambda: section_c(args.small, args.iters),
        "d": lambda: section_d(args.small, args.iters),
        "p": lambda: section_p(args.small, args.iters, args.dtype),
    }
    for letter in args.only:
        if letter == "b":
            continue  # part of section a
        t = time.perf_counter()
        try:
            sections[letter]()
        except Exception as exc:  # noqa: BLE001 - printed; keep the other sections' numbers
            print(f"[{letter}] FAILED: {exc!r}", flush=True)
        print(f"--- section {letter} took {time.perf_counter() - t:.1f} s", flush=True)
        mx.clear_cache()
    print("\n| section | experiment | median ms | note |\n|---|---|---|---|")
    for section, name, ms, note in ROWS:
        print(f"| {section} | {name} | {ms:.3f} | {note} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"mlx": mx.__version__, "device": str(mx.default_device()),
                                               "rows": ROWS}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
