"""The 8-bit KV ring (`RingKVCache(bits=8)`, the default for quantised models): its row codes, and a
layer stack on it against the same stack on a full-precision ring, through prefill chunks and
single steps past the ring's wrap."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from ppchat.models.kv_cache import RingKVCache, quantize_rows
from ppchat.models.loader import resolve_kv_bits
from ppchat.models.transformer import Transformer


def test_quantize_rows_codes_and_scales() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 64)).astype(np.float32) * rng.uniform(0.1, 10, (2, 3, 5, 1)).astype(np.float32)
    x[0, 0, 0] = 0.0  # an all-zero row: zero codes, zero scale, no NaN
    codes, scale = quantize_rows(mx.array(x))
    codes, scale = np.array(codes), np.array(scale)
    assert codes.dtype == np.int8 and scale.shape == (2, 3, 5, 1)
    assert np.abs(codes).max() == 127 and np.all(codes[0, 0, 0] == 0) and scale[0, 0, 0, 0] == 0
    np.testing.assert_allclose(scale[..., 0], np.abs(x).max(axis=-1) / 127, rtol=1e-6)
    # Rounding to the nearest code: within half a step of the true value.
    assert np.all(np.abs(codes * scale - x) <= scale / 2 + 1e-6)


def test_only_8_bit_or_full_precision_rings() -> None:
    with pytest.raises(ValueError, match="bits"):
        RingKVCache(1, 2, 64, 10, mx.float32, bits=4)
    assert resolve_kv_bits("auto", 4) == 8 and resolve_kv_bits("auto", None) is None
    assert resolve_kv_bits(None, 8) is None and resolve_kv_bits(8, None) == 8


def test_stack_on_8_bit_ring_tracks_full_precision_ring() -> None:
    mx.random.seed(1)
    stack = Transformer(dim=128, num_heads=2, num_layers=2, hidden=256, context=24, max_period=10000.0, norm_eps=1e-8)
    mx.eval(stack.parameters())
    exact = stack.make_cache(1, mx.float32)
    coded = stack.make_cache(1, mx.float32, bits=8)
    assert coded[0].keys.dtype == mx.int8 and len(coded[0].state) == 5

    def both(x: mx.array) -> tuple[np.ndarray, np.ndarray]:
        a, b = stack(x, exact), stack(x, coded)
        mx.eval(a, b, [c.state for c in exact + coded])
        return np.array(a), np.array(b)

    # A prefill chunk, then single steps well past the wrap (context 24), then another chunk.
    chunks = [7] + [1] * 40 + [5] + [1] * 10
    for t in chunks:
        a, b = both(mx.random.normal((1, t, 128)))
        # int8 rows carry ~0.4 % error per key/value; through two layers the outputs stay close.
        np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05)
    assert int(coded[0].offset) == sum(chunks)
