"""Mimi parity with the reference PyTorch codec, through the golden fixtures (every `kind: mimi` directory).

Codes must match exactly: the fixture generator re-drew weights until every nearest-codebook choice beat
the runner-up by >= 1e-3 in distance (`min_vq_distance_gap`), far above float32 rounding.

PCM tolerance: atol = 1e-5 x max(1, peak |reference PCM|). Both sides are float32 on CPU; the error measured
on `mimi_tiny` is ~1e-6 against a peak of ~1.9, so this leaves >10x headroom for other sizes and seeds
while still catching real mistakes: tanh-approximate GELU instead of exact erf GELU moves `mimi_tiny`'s PCM
by 4.4e-5, which the README's looser "about 1e-4" would let through.

The shipped fixture never wraps the transformers' KV ring (its context exceeds the stream) and feeds every
conv whole multiples of its stride, so those paths are checked here from first principles instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from ppchat.models import manifest as manifest_module
from ppchat.models.conv import StreamingConv1d, StreamingConvTranspose1d
from ppchat.models.mimi import Mimi, MimiConfig
from ppchat.models.mimi_transformer import MimiAttention, MimiTransformer, MimiTransformerConfig
from tests.conftest import fixture_params, fixtures_root

MIMI_FIXTURES = fixture_params("mimi")


def _load(fixture_dir: Path, **transformer_overrides) -> tuple[Mimi, dict[str, mx.array]]:
    config = MimiConfig.from_reference(json.loads((fixture_dir / "config.json").read_text()))
    if transformer_overrides:
        config = dataclasses.replace(
            config, transformer=dataclasses.replace(config.transformer, **transformer_overrides)
        )
    mimi = Mimi(config)
    mimi.load_reference_weights(mx.load(str(fixture_dir / "weights.safetensors")))
    return mimi, mx.load(str(fixture_dir / "io.safetensors"))


def _stream_encode(mimi: Mimi, pcm: mx.array) -> mx.array:
    mimi.reset(pcm.shape[0])
    fs = mimi.frame_size
    return mx.concatenate([mimi.encode_step(pcm[:, :, i : i + fs]) for i in range(0, pcm.shape[2], fs)], axis=2)


def _stream_decode(mimi: Mimi, codes: mx.array) -> mx.array:
    mimi.reset(codes.shape[0])
    return mx.concatenate([mimi.decode_step(codes[:, :, i : i + 1]) for i in range(codes.shape[2])], axis=2)


def _assert_codes_equal(got: mx.array, want: mx.array) -> None:
    got, want = np.array(got), np.array(want)
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{len(bad)} codes differ, first at [batch, codebook, frame] = {bad[0].tolist()}"


def _assert_pcm_close(got: mx.array, want: mx.array) -> None:
    got, want = np.array(got), np.array(want)
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    atol = 1e-5 * max(1.0, float(np.abs(want).max()))
    print(f"worst PCM error {err:.3g} (tolerance {atol:.3g})")
    worst = int(np.abs(got - want).argmax())
    assert err <= atol, f"PCM differs by up to {err:.3g} (tolerance {atol:.3g}) at flat index {worst}"


# --- golden fixtures ----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_streaming_encode_matches_reference(fixture_dir):
    mimi, io = _load(fixture_dir)
    _assert_codes_equal(_stream_encode(mimi, io["pcm_in"]), io["codes_stream"])
    # A second stream after reset must not remember the first one.
    _assert_codes_equal(_stream_encode(mimi, io["pcm_in"]), io["codes_stream"])


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_streaming_encode_keeps_batch_rows_apart(fixture_dir):
    mimi, io = _load(fixture_dir)
    pcm = io["pcm_in"]
    batch = mx.concatenate([pcm[:, :, ::-1], pcm], axis=0)
    _assert_codes_equal(_stream_encode(mimi, batch)[1:], io["codes_stream"])


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_streaming_decode_matches_reference(fixture_dir):
    mimi, io = _load(fixture_dir)
    _assert_pcm_close(_stream_decode(mimi, io["codes_stream"]), io["pcm_stream"])
    _assert_pcm_close(_stream_decode(mimi, io["codes_stream"]), io["pcm_stream"])


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_whole_signal_encode_matches_reference(fixture_dir):
    mimi, io = _load(fixture_dir)
    _assert_codes_equal(mimi.encode(io["pcm_in"]), io["codes_full"])


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_whole_signal_decode_matches_reference(fixture_dir):
    mimi, io = _load(fixture_dir)
    _assert_pcm_close(mimi.decode(io["codes_full"]), io["pcm_full"])


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_streaming_runs_past_a_small_context(fixture_dir):
    """A 3-step context wraps the ring within two frames. The first frame attends to positions 0 and 1
    only, so its codes cannot depend on the context; every later frame must still come out whole."""
    mimi, io = _load(fixture_dir, context=3)
    pcm = mx.concatenate([io["pcm_in"], io["pcm_in"]], axis=2)
    codes = _stream_encode(mimi, pcm)
    n_frames = pcm.shape[2] // mimi.frame_size
    assert codes.shape == (1, mimi.num_codebooks, n_frames)
    _assert_codes_equal(codes[:, :, :1], io["codes_stream"][:, :, :1])
    assert int(codes.min()) >= 0 and int(codes.max()) < mimi.config.quantizer.bins
    out = _stream_decode(mimi, codes)
    assert out.shape == (1, 1, n_frames * mimi.frame_size)
    assert bool(mx.all(mx.isfinite(out)))


# --- checkpoint layout of the real codec ---------------------------------------------------------


def _manifest_mimi() -> dict:
    return json.loads((fixtures_root() / "manifest_7b.json").read_text())["mimi"]


def test_personaplex_config_matches_manifest_kwargs():
    manifest = _manifest_mimi()
    sections = {k: manifest[k] for k in ("seanet", "quantizer", "transformer")}
    assert MimiConfig.from_reference(sections) == MimiConfig.personaplex()


def test_real_checkpoint_loads_into_this_module_tree():
    """The real 318-key codec file, as its keys and shapes (lazy zeros, never evaluated: nothing is
    allocated), passes the key check and converts into exactly this module's parameters."""
    want = {k: tuple(v) for k, v in _manifest_mimi()["keys"].items()}
    mimi = Mimi(MimiConfig.personaplex())
    assert manifest_module.mimi_reference_shapes(mimi.config.reference_config()) == want
    weights = {k: mx.zeros(shape) for k, shape in want.items()}
    mimi.load_weights(list(mimi.sanitize(weights).items()), strict=True)  # raises on a missing or mis-shaped one


# --- KV ring: streaming against a first-principles NumPy transformer ------------------------------


def _np_layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w + b


def _np_rope(x, positions, max_period):
    """Interleaved pairs (2i, 2i+1) rotated by position * max_period^(-2i/D)."""
    d = x.shape[-1]
    freqs = np.exp(np.arange(d // 2) * (-math.log(max_period) * 2 / d))
    angle = positions[:, None] * freqs[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    re, im = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = re * cos - im * sin
    out[..., 1::2] = re * sin + im * cos
    return out


def _np_transformer(params: dict, cfg: MimiTransformerConfig, x: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """x [T, D]; visible[p, q]: may query position p attend to key position q."""
    erf = np.vectorize(math.erf)
    t, h, dh = x.shape[0], cfg.num_heads, cfg.head_dim
    pos = np.arange(t, dtype=np.float64)
    for i in range(cfg.num_layers):
        p = {k.split(f"layers.{i}.", 1)[1]: v for k, v in params.items() if k.startswith(f"layers.{i}.")}
        qkv = _np_layer_norm(x, p["norm1.weight"], p["norm1.bias"]) @ p["self_attn.in_proj.weight"].T
        q, k, v = (qkv.reshape(t, 3, h, dh)[:, j].transpose(1, 0, 2) for j in range(3))
        q, k = _np_rope(q, pos, cfg.max_period), _np_rope(k, pos, cfg.max_period)
        scores = np.where(visible, q @ k.transpose(0, 2, 1) / math.sqrt(dh), -np.inf)
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        out = (attn @ v).transpose(1, 0, 2).reshape(t, cfg.d_model) @ p["self_attn.out_proj.weight"].T
        x = x + p["layer_scale_1.scale"] * out
        hidden = _np_layer_norm(x, p["norm2.weight"], p["norm2.bias"]) @ p["linear1.weight"].T
        hidden = 0.5 * hidden * (1 + erf(hidden / math.sqrt(2)))
        x = x + p["layer_scale_2.scale"] * (hidden @ p["linear2.weight"].T)
    return x


def _random_transformer(context: int) -> tuple[MimiTransformer, MimiTransformerConfig]:
    cfg = MimiTransformerConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=24, context=context, max_period=1e4)
    model = MimiTransformer(cfg)
    mx.random.seed(0)
    model.update(tree_map(lambda p: 0.5 * mx.random.normal(p.shape), model.parameters()))
    return model, cfg


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_transformer_ring_matches_first_principles(chunk):
    """Reference rule (`RingKVCache.complete`): after the chunk's keys are written the ring holds positions
    e - context .. e - 1 (e = chunk end), but the oldest is labelled as future. So query p sees keys q with
    p - context < q <= p and q > e - context."""
    context, steps = 5, 18
    model, cfg = _random_transformer(context)
    x = mx.random.normal((1, steps, cfg.d_model))
    model.reset()
    got = mx.concatenate([model.step(x[:, i : i + chunk]) for i in range(0, steps, chunk)], axis=1)

    p = np.arange(steps)[:, None]
    q = np.arange(steps)[None, :]
    chunk_end = np.minimum((p // chunk + 1) * chunk, steps)
    visible = (q <= p) & (p - q < context) & (q > chunk_end - context)
    params = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(model.parameters())}
    want = _np_transformer(params, cfg, np.array(x[0], dtype=np.float64), visible)
    np.testing.assert_allclose(np.array(got[0]), want, atol=1e-4)

    whole = _np_transformer(params, cfg, np.array(x[0], dtype=np.float64), (q <= p) & (p - q < context))
    np.testing.assert_allclose(np.array(model(x)[0]), whole, atol=1e-4)


def test_transformer_streaming_equals_whole_signal_within_context():
    model, cfg = _random_transformer(context=64)
    x = mx.random.normal((2, 20, cfg.d_model))
    model.reset(batch_size=2)
    streamed = mx.concatenate([model.step(x[:, i : i + 2]) for i in range(0, 20, 2)], axis=1)
    np.testing.assert_allclose(np.array(streamed), np.array(model(x)), atol=1e-5)


# --- convolutions: streaming in ragged chunks equals the whole signal ----------------------------


def _randomize(layer: nn.Module) -> nn.Module:
    mx.random.seed(1)
    layer.update(tree_map(lambda p: mx.random.normal(p.shape), layer.parameters()))
    return layer


CHUNKS = [5, 1, 0, 7, 3, 12, 2, 1]  # 31 samples in all: crosses every stride remainder, includes an empty call


@pytest.mark.parametrize(
    "kernel,stride,dilation,pad_mode",
    [(7, 1, 1, "constant"), (3, 1, 2, "constant"), (8, 4, 1, "constant"), (4, 2, 1, "replicate"),
     (1, 1, 1, "constant"), (1, 1, 1, "replicate")],
)
def test_conv_streaming_equals_whole_signal(kernel, stride, dilation, pad_mode):
    """A causal conv sees only the past, so chunking cannot change it; the whole-signal right padding only
    completes the last window, and there is none to complete when the length is a multiple of the stride."""
    conv = _randomize(StreamingConv1d(3, 4, kernel, stride=stride, dilation=dilation, pad_mode=pad_mode))
    total = sum(CHUNKS) + (-sum(CHUNKS)) % stride
    x = mx.random.normal((2, total, 3))
    sizes = CHUNKS + [total - sum(CHUNKS)]
    conv.reset(batch_size=2)
    starts = np.cumsum([0] + sizes)
    streamed = mx.concatenate([conv.step(x[:, a:b]) for a, b in zip(starts[:-1], starts[1:])], axis=1)
    np.testing.assert_allclose(np.array(streamed), np.array(conv(x)), atol=1e-5)


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_transpose_streaming_equals_whole_signal(groups):
    # The 1-sample chunks are the case where the whole output is the carried overlap (kernel = 2 x stride).
    convtr = _randomize(StreamingConvTranspose1d(4, 4, 6, stride=3, groups=groups))
    x = mx.random.normal((1, sum(CHUNKS), 4))
    convtr.reset()
    starts = np.cumsum([0] + CHUNKS)
    streamed = mx.concatenate([convtr.step(x[:, a:b]) for a, b in zip(starts[:-1], starts[1:])], axis=1)
    np.testing.assert_allclose(np.array(streamed), np.array(convtr(x)), atol=1e-5)


def test_attention_off_metal_is_mlx_attention_bit_for_bit_at_head_size_64():
    """Off Metal, Mimi attends with MLX's fallback written out, the scale moved into the mask's select;
    at Mimi's head size (scale 1/8, a power of two) that changes no bit."""
    cfg = MimiTransformerConfig(d_model=128, num_heads=2, num_layers=1, dim_feedforward=64, context=40, max_period=1e4)
    attn = MimiAttention(cfg)
    mx.random.seed(3)
    q, k, v = (mx.random.normal((2, 2, 2, 64)) for _ in range(3))
    k, v = mx.concatenate([k] * 20, axis=2), mx.concatenate([v] * 20, axis=2)
    mask = mx.random.uniform(shape=(2, 1, 2, 40)) > 0.3
    out = attn._attend(q, k, v, mask)
    reference = mx.fast.scaled_dot_product_attention(q, k, v, scale=64**-0.5, mask=mask)
    want = attn.out_proj(reference.transpose(0, 2, 1, 3).reshape(2, 2, 128))
    np.testing.assert_array_equal(np.array(out), np.array(want))
