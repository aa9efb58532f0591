"""Building blocks shared by the LM's temporal transformer and its depformer.

Both follow the reference `StreamingTransformerLayer` (spec §4.2): pre-norm RMSNorm in float32 with
eps 1e-8, a fused QKV projection laid out (q|k|v) x head x head_dim, and a SiLU-gated FFN whose first
half of `linear_in` is the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ppchat.models import cuda_kernels
from ppchat.models.kv_cache import RingKVCache, RingStep


class RMSNorm(nn.Module):
    """The reference `rms_norm_f32`: no mean subtraction, math in float32, cast back at the end.

    `mx.fast.rms_norm` on the float32 input instead of the ~3 kernels an elementwise form compiles
    to; it forms `(x * rsqrt(mean(x^2) + eps)) * weight`, where the reference multiplies
    `x * (weight * rsqrt(...))`: the same up to float32 rounding. On MLX's CUDA backend a bf16 input
    goes through one fused kernel instead (`cuda_kernels.rms_norm`, the reference's exact order),
    saving the two casts' kernels.
    """

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype != mx.float32 and cuda_kernels.available():
            return cuda_kernels.rms_norm(x, self.weight, self.eps)
        # A bf16 weight converts to float32 exactly inside the kernel.
        return mx.fast.rms_norm(x.astype(mx.float32), self.weight, self.eps).astype(x.dtype)


def project(linear: nn.Module, x: mx.array) -> mx.array:
    """`linear(x)`, with a batch of single-token rows [B, 1, D] (B > 1) projected as one [1, B, D]
    matrix (a free reshape) and given back as [B, 1, out]. MLX 0.32's CUDA quantised matmul runs
    [B, 1, D] as B one-row products, ~5.7x slower than the same rows as one matrix (BENCHMARKS.md:
    248 against 44 µs for a q4 4096 -> 12288 projection at B = 8); the result is the same."""
    if x.ndim == 3 and x.shape[1] == 1 and x.shape[0] > 1:
        return linear(x.reshape(1, x.shape[0], x.shape[2])).reshape(x.shape[0], 1, -1)
    return linear(x)


class GatedFFN(nn.Module):
    """`linear_out(silu(gate) * value)` where `linear_in`'s output is `[gate | value]`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, value = mx.split(project(self.linear_in, x), 2, axis=-1)
        return project(self.linear_out, nn.silu(gate) * value)


def pick(x: mx.array, index: int, axis: int = 0) -> mx.array:
    """`x` at `index` along `axis`, as a view. (`x[i]` is a gather in MLX: a copy and a kernel.)"""
    where = [slice(None)] * x.ndim
    where[axis] = slice(index, index + 1)
    return mx.squeeze(x[tuple(where)], axis)


def stack_columns(columns: list[mx.array]) -> mx.array:
    """Integer arrays of one shape [B, ...] -> int32 [B, n, ...], as `mx.stack(columns, axis=1)`, built
    as elementwise arithmetic (column i times the i-th unit vector, summed; exact for integers).
    Under `mx.compile` that is one fused kernel (casts included); a stack on a GPU launches one copy
    kernel per column."""
    n = len(columns)
    units = np.eye(n, dtype=np.int32).reshape(n, n, *([1] * (columns[0].ndim - 1)))
    out = None
    for column, unit in zip(columns, units):
        term = mx.expand_dims(column.astype(mx.int32), 1) * mx.array(unit)
        out = term if out is None else out + term
    return out


def split_qkv(qkv: mx.array, num_heads: int) -> tuple[mx.array, mx.array, mx.array]:
    """[B, T, 3*D] fused projection -> q, k, v as [B, H, T, head_dim] (views)."""
    b, t, _ = qkv.shape
    qkv = qkv.reshape(b, t, 3, num_heads, -1).transpose(2, 0, 3, 1, 4)
    return pick(qkv, 0), pick(qkv, 1), pick(qkv, 2)


def merge_heads(x: mx.array) -> mx.array:
    """[B, H, T, head_dim] -> [B, T, H*head_dim] (head-major, as out_proj expects)."""
    b, h, t, d = x.shape
    if t == 1:  # the same memory order: a view where the transpose would be a copy kernel
        return x.reshape(b, 1, h * d)
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


@dataclass(frozen=True)
class StackStep:
    """What every layer of a stack shares in one call, computed once: the visibility mask [T, S]
    (`RingKVCache.mask_for`), for a single token the ring step (`RingKVCache.plan`), and on CUDA the
    fused ring-attention kernel's tickets (`cuda_kernels.attention_tickets`), which make a single
    bf16 token attend through that kernel, with no mask."""

    mask: mx.array
    ring: RingStep | None = None
    tickets: mx.array | None = None

    @classmethod
    def for_cache(cls, cache: RingKVCache, t: int) -> StackStep:
        if t == 1:
            return cls(cache.mask_for(1), cache.plan(), cache.tickets)
        return cls(cache.mask_for(t))


class RopeAttention(nn.Module):
    """Causal self-attention of the temporal transformer: interleaved RoPE on absolute positions
    and a ring KV cache whose mask limits each query to `context` keys (spec §4.2)."""

    def __init__(self, dim: int, num_heads: int, max_period: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.max_period = float(max_period)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array, cache: RingKVCache, shared: StackStep | None = None) -> mx.array:
        """`shared` is what the stack computed once for this call (`StackStep`); computed here from
        `cache` when not given."""
        b, t, _ = x.shape
        shared = shared or StackStep.for_cache(cache, t)
        qkv = project(self.in_proj, x).reshape(b, t, 3, self.num_heads, self.head_dim)
        # q and k rotated in one kernel. The reference rotates (2i, 2i+1) pairs in float32 and casts
        # back (spec pitfall 1); MLX's rope kernel computes in float32 and rounds once, the same.
        # A per-row ring has a position counter per row, which RoPE takes along the leading axis.
        axis = 1 if cache.per_row else 0
        qkv = qkv.transpose(0, 2, 3, 1, 4) if cache.per_row else qkv.transpose(2, 0, 3, 1, 4)
        qk = mx.fast.rope(qkv[:, :2] if cache.per_row else qkv[:2], self.head_dim, traditional=True,
                          base=self.max_period, scale=1.0, offset=cache.offset)
        q, k, v = pick(qk, 0, axis), pick(qk, 1, axis), pick(qkv, 2, axis)
        step = shared.ring
        if step and shared.tickets is not None and q.dtype == mx.bfloat16 and cuda_kernels.fits_ring_attention(q):
            # The kernel writes k/v into the ring itself; the cache only advances its counter.
            out = cuda_kernels.ring_attention(q, k, v, cache, step.next_offset, self.scale, shared.tickets)
            cache.update(k, v, step, written=True)
        else:
            keys, values = cache.update(k, v, step)
            out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=self.scale, mask=shared.mask)
        return project(self.out_proj, merge_heads(out))


def embed_tokens(table: nn.Embedding, tokens: mx.array) -> mx.array:
    """Embedding lookup where token -1 gives an exact zero row (the reference `ScaledEmbedding`).

    A -1 is looked up as is (MLX's gathers wrap a negative index, as numpy's do: the last row) and
    its row replaced by zeros. The test reads the tokens through a view, so that it fuses into the
    select (and whatever elementwise work follows) under `mx.compile`: clamping the index first, or
    testing `tokens >= 0` before the reshape, was two kernels more per lookup."""
    rows = table(tokens)
    return mx.where(tokens[..., None] >= 0, rows, mx.zeros((), dtype=rows.dtype))
