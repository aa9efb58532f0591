"""ppchat's fused CUDA kernels against the plain MLX forms they replace (run where MLX's CUDA
backend is the default device; elsewhere the kernels are never used, and these tests skip)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from ppchat.models import cuda_kernels

pytestmark = pytest.mark.skipif(not cuda_kernels.available(), reason="needs MLX's CUDA backend")


@pytest.mark.parametrize("dim", [1024, 4096])
@pytest.mark.parametrize("weight_dtype", [mx.bfloat16, mx.float32])
def test_rms_norm_matches_the_reference_float32_formula(dim: int, weight_dtype: mx.Dtype) -> None:
    rng = np.random.default_rng(dim)
    x = mx.array(rng.standard_normal((3, 2, dim)).astype(np.float32) * 3).astype(mx.bfloat16)
    weight = mx.array(rng.uniform(0.5, 1.5, dim).astype(np.float32)).astype(weight_dtype)
    eps = 1e-8
    got = cuda_kernels.rms_norm(x, weight, eps)
    xf = np.array(x.astype(mx.float32), dtype=np.float64)
    wf = np.array(weight.astype(mx.float32), dtype=np.float64)
    want = xf * (wf / np.sqrt(np.mean(xf**2, axis=-1, keepdims=True) + eps))
    assert got.dtype == mx.bfloat16 and got.shape == x.shape
    # One rounding to bf16 at the end: within half a bf16 ulp (2^-8 relative) of the exact value.
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("bits", [None, 8])
@pytest.mark.parametrize("written", [1, 7, 49, 50, 51, 123])
def test_ring_attention_writes_like_the_cache_and_attends_like_masked_softmax(written: int, bits) -> None:
    from ppchat.models.kv_cache import RingKVCache

    context, heads, dim = 50, 4, 128
    rng = np.random.default_rng(written)

    def normal(*shape: int) -> mx.array:
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(mx.bfloat16)

    # Two rings in the same state after `written - 1` tokens, written through the MLX path.
    plain = RingKVCache(1, heads, dim, context, mx.bfloat16, bits)
    fused = RingKVCache(1, heads, dim, context, mx.bfloat16, bits)
    for _ in range(written - 1):
        k, v = normal(1, heads, 1, dim), normal(1, heads, 1, dim)
        plain.update(k, v)
        fused.update(k, v)
    mx.eval([c.state for c in (plain, fused)])
    visible = np.array(plain.mask_for(1))[0]
    q, k, v = normal(1, heads, 1, dim), normal(1, heads, 1, dim), normal(1, heads, 1, dim)
    keys, values = plain.update(k, v)  # the MLX path: write, then the ring to attend over
    mx.eval(keys, values, plain.state)

    tickets = cuda_kernels.attention_tickets(1, heads)
    mx.eval(tickets)
    scale = dim**-0.5
    got = cuda_kernels.ring_attention(q, k, v, fused, mx.array(written, dtype=mx.int32), scale, tickets)
    fused.update(k, v, written=True)
    mx.eval(got, fused.state)

    # The kernel stored exactly the bytes the MLX path stores (codes and scales for an 8-bit ring).
    for mine, theirs in zip(fused.state, plain.state):
        assert mx.array_equal(mine, theirs).item()
    # It handed its tickets back: a later call starts from zeros again.
    assert np.array(tickets).tolist() == [0] * heads

    qf, kf, vf = (np.array(a.astype(mx.float32), dtype=np.float64)[0] for a in (q, keys, values))
    if bits:  # the kernel reads codes x scales in float32, not the bf16-rounded ring MLX attends over
        kf = (np.array(plain.keys, dtype=np.float64) * np.array(plain.key_scales, dtype=np.float64))[0]
        vf = (np.array(plain.values, dtype=np.float64) * np.array(plain.value_scales, dtype=np.float64))[0]
    scores = np.einsum("hd,hsd->hs", qf[:, 0], kf) * scale
    scores[:, ~visible] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    want = np.einsum("hs,hsd->hd", weights, vf)
    assert got.shape == q.shape and got.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(got.astype(mx.float32))[0, :, 0], want, rtol=2**-7, atol=2e-3)


@pytest.mark.parametrize("bits", [None, 8])
@pytest.mark.parametrize("rows", [1, 3])
def test_temporal_steps_with_the_ring_kernel_match_the_masked_sdpa_path(bits, rows: int) -> None:
    """Whole single-token steps of a bf16 transformer (ring of 40, run past a wrap) with the fused
    kernel and with MLX's masked attention give the same outputs, to bf16 accuracy. With 3 rows the
    rings are per-row and rows restart at different steps (as conversations join a batch), so each
    row attends at its own position."""
    from ppchat.models.transformer import Transformer

    mx.random.seed(0)
    stack = Transformer(dim=256, num_heads=2, num_layers=2, hidden=512, context=40, max_period=10000.0, norm_eps=1e-8)
    stack.set_dtype(mx.bfloat16)
    mx.eval(stack.parameters())
    per_row = rows > 1
    fused_cache = stack.make_cache(rows, mx.bfloat16, bits, per_row=per_row)
    plain_cache = stack.make_cache(rows, mx.bfloat16, bits, per_row=per_row)
    assert fused_cache[0].tickets is not None
    for cache in plain_cache:
        cache.tickets = None  # the masked SDPA path
    for index in range(90):
        if per_row and index in (17, 55):
            row = 1 if index == 17 else 2
            for caches in (fused_cache, plain_cache):
                for ring, fresh in zip(caches, stack.make_cache(1, mx.bfloat16, bits)):
                    ring.load_row(row, fresh)
        x = mx.random.normal((rows, 1, 256)).astype(mx.bfloat16)
        fused = stack(x, fused_cache)
        mx.eval(fused, [c.state for c in fused_cache])
        plain = stack(x, plain_cache)
        mx.eval(plain, [c.state for c in plain_cache])
        np.testing.assert_allclose(
            np.array(fused.astype(mx.float32)), np.array(plain.astype(mx.float32)), rtol=0.05, atol=0.05,
            err_msg=f"step {index}",
        )
    if per_row:
        assert np.array(fused_cache[0].offset).tolist() == [90, 90 - 17, 90 - 55]
