"""Fused kernels for MLX's CUDA backend, where a streaming step is bound by kernel count.

At batch 1 on an H100 a frame launches ~3000 kernels, and each costs ~10 µs of host dispatch, far
more than its GPU time (BENCHMARKS.md, "Trace"). These kernels do in one launch what MLX's stock
ops need several for. Each is used only where `available()` (MLX's CUDA backend is the default
device); every other backend keeps the plain MLX form, which the parity tests check.

* `rms_norm`: the reference `rms_norm_f32` on a bf16 input in one kernel (cast to float32, mean of
  squares, `x * (alpha * rsqrt(v + eps))`, one rounding back), where the MLX form needs a cast in, a
  norm and a cast out (three kernels; feeding bf16 to `mx.fast.rms_norm` instead would round twice).
* `ring_attention`: one query against a full `RingKVCache` ring, with the ring's visibility rule
  (`kv_cache.py`) computed in the kernel from the position counter. MLX's fused decode attention
  takes no mask, so a masked one falls back to ~6 kernels per layer (scores, mask select, softmax,
  values, casts) plus the mask's own; this is one kernel per layer and no mask at all.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

RMS_BLOCK = 256

_RMS_SOURCE = """
    constexpr int WARPS = BLOCK / 32;
    __shared__ float partial[WARPS];
    __shared__ float scale;
    const int row = blockIdx.y;
    const int tid = threadIdx.x;
    const T* xr = x + static_cast<size_t>(row) * D;
    float ss = 0.0f;
    for (int i = tid; i < D; i += BLOCK) {
        const float v = static_cast<float>(xr[i]);
        ss += v * v;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        ss += __shfl_xor_sync(0xffffffffu, ss, offset);
    }
    if (tid % 32 == 0) {
        partial[tid / 32] = ss;
    }
    __syncthreads();
    if (tid == 0) {
        float total = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            total += partial[w];
        }
        scale = rsqrtf(total / static_cast<float>(D) + EPS);
    }
    __syncthreads();
    T* outr = out + static_cast<size_t>(row) * D;
    for (int i = tid; i < D; i += BLOCK) {
        outr[i] = static_cast<T>(static_cast<float>(xr[i]) * (static_cast<float>(weight[i]) * scale));
    }
"""


def available() -> bool:
    """True where these kernels run: MLX's CUDA backend is the default device."""
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


@lru_cache(maxsize=None)
def _rms_kernel(eps: float):
    # eps is a float, which kernel templates cannot carry: it is written into the source.
    source = f"    constexpr float EPS = {eps!r}f;\n" + _RMS_SOURCE
    return mx.fast.cuda_kernel(
        name=f"ppchat_rms_norm_{abs(hash(eps)) % 10**8}",
        input_names=["x", "weight"],
        output_names=["out"],
        source=source,
    )


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """RMSNorm over the last axis of a bf16/f16/f32 `x`, math in float32, result in x's dtype."""
    d = x.shape[-1]
    rows = x.size // d
    (out,) = _rms_kernel(float(eps))(
        inputs=[x, weight],
        template=[("T", x.dtype), ("D", d), ("BLOCK", RMS_BLOCK)],
        grid=(RMS_BLOCK, rows, 1),
        threadgroup=(RMS_BLOCK, 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )
    return out


ATTN_WARPS = 8
ATTN_UNROLL = 8
ATTN_SPLITS = 8

# Split-K decoding: the ring of each (batch, head) is cut into SPLITS ranges, one block each (32 heads
# x 8 splits fill the H100's SMs; one block per head left most of them idle and ran ~120 µs per
# layer). In a block each warp walks every WARPS-th group of UNROLL slots with an online softmax
# (lane i holds dims i*D/32 ...), the warps are merged in shared memory, and the block's
# (max, sum, acc) goes to `partial`. The last block of a head to finish (an atomic ticket on
# `tickets`, which it resets to 0) merges the SPLITS partials into `out`, so the whole attention is
# one launch. `tickets` is a persistent zeroed int32 [B*H] array owned by the caller: it is written
# in place, which is safe because successive layers' calls are ordered by their data dependencies.
_ATTN_SOURCE = """
    constexpr int WARPS = NWARPS;
    constexpr int PER_LANE = D / 32;
    constexpr int CHUNK = (S + SPLITS - 1) / SPLITS;
    constexpr int STRIDE = D + 2;
    static_assert(D % 32 == 0 && PER_LANE <= 8, "head dim");
    __shared__ float warp_max[WARPS];
    __shared__ float warp_sum[WARPS];
    __shared__ float warp_acc[WARPS][D];
    __shared__ bool is_last;
    const int bh = blockIdx.y / SPLITS;
    const int split = blockIdx.y % SPLITS;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int last = static_cast<int>(offset[0]) - 1;  // position of this query (its key is written)
    const int lo = split * CHUNK;
    const int hi = min(S, lo + CHUNK);
    const T* qrow = q + static_cast<size_t>(bh) * D;
    const T* kbase = keys + static_cast<size_t>(bh) * S * D;
    const T* vbase = values + static_cast<size_t>(bh) * S * D;
    float qf[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        qf[i] = static_cast<float>(qrow[lane * PER_LANE + i]) * SCALE;
    }
    const float neg_inf = __int_as_float(0xff800000);
    float m = neg_inf;
    float l = 0.0f;
    float acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        acc[i] = 0.0f;
    }
    for (int base = lo + warp * UNROLL; base < hi; base += WARPS * UNROLL) {
        float score[UNROLL];
        float vals[UNROLL][PER_LANE];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int j = base + u;
            float dot = 0.0f;
            if (j < hi) {
                const T* krow = kbase + static_cast<size_t>(j) * D + lane * PER_LANE;
                const T* vrow = vbase + static_cast<size_t>(j) * D + lane * PER_LANE;
#pragma unroll
                for (int i = 0; i < PER_LANE; ++i) {
                    dot += qf[i] * static_cast<float>(krow[i]);
                    vals[u][i] = static_cast<float>(vrow[i]);
                }
            }
            score[u] = dot;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int o = 16; o > 0; o /= 2) {
                score[u] += __shfl_xor_sync(0xffffffffu, score[u], o);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int j = base + u;
            // Slot j holds position last - age; visible iff written (age <= last) and inside the
            // reference's window of S - 1 keys (age < S - 1).
            const int age = ((last - j) % S + S) % S;
            if (j < hi && age <= last && age < S - 1) {
                const float m_new = fmaxf(m, score[u]);
                const float keep = __expf(m - m_new);
                const float p = __expf(score[u] - m_new);
                l = l * keep + p;
#pragma unroll
                for (int i = 0; i < PER_LANE; ++i) {
                    acc[i] = acc[i] * keep + p * vals[u][i];
                }
                m = m_new;
            }
        }
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        warp_acc[warp][lane * PER_LANE + i] = acc[i];
    }
    __syncthreads();
    float block_max = neg_inf;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        block_max = fmaxf(block_max, warp_max[w]);
    }
    float* mine = partial + (static_cast<size_t>(bh) * SPLITS + split) * STRIDE;
    for (int d = threadIdx.x; d < D + 1; d += blockDim.x) {
        float num = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float f = warp_sum[w] > 0.0f ? __expf(warp_max[w] - block_max) : 0.0f;
            num += (d < D ? warp_acc[w][d] : warp_sum[w]) * f;
        }
        mine[d < D ? d : D] = num;  // acc[0..D-1], then the sum at D
    }
    if (threadIdx.x == 0) {
        mine[D + 1] = block_max;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* ticket = const_cast<int*>(tickets) + bh;
        is_last = atomicAdd(ticket, 1) == SPLITS - 1;
    }
    __syncthreads();
    if (!is_last) {
        return;
    }
    __threadfence();
    const volatile float* parts = partial + static_cast<size_t>(bh) * SPLITS * STRIDE;
    float top = neg_inf;
#pragma unroll
    for (int p = 0; p < SPLITS; ++p) {
        if (parts[p * STRIDE + D] > 0.0f) {
            top = fmaxf(top, parts[p * STRIDE + D + 1]);
        }
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float num = 0.0f;
        float den = 0.0f;
#pragma unroll
        for (int p = 0; p < SPLITS; ++p) {
            const float sum = parts[p * STRIDE + D];
            const float f = sum > 0.0f ? __expf(parts[p * STRIDE + D + 1] - top) : 0.0f;
            num += parts[p * STRIDE + d] * f;
            den += sum * f;
        }
        out[static_cast<size_t>(bh) * D + d] = static_cast<T>(num / den);
    }
    if (threadIdx.x == 0) {
        const_cast<int*>(tickets)[bh] = 0;
    }
"""


@lru_cache(maxsize=None)
def _attn_kernel(scale: float):
    source = f"    constexpr float SCALE = {scale!r}f;\n" + _ATTN_SOURCE
    return mx.fast.cuda_kernel(
        name=f"ppchat_ring_attention_{abs(hash(scale)) % 10**8}",
        input_names=["q", "keys", "values", "offset", "tickets"],
        output_names=["out", "partial"],
        source=source,
    )


def attention_tickets(batch: int, heads: int) -> mx.array:
    """The zeroed ticket array `ring_attention` needs, one per stack (kept and reused every step)."""
    return mx.zeros((batch * heads,), dtype=mx.int32)


def ring_attention(
    q: mx.array, keys: mx.array, values: mx.array, next_offset: mx.array, scale: float, tickets: mx.array
) -> mx.array:
    """Attention of one query per head, q [B, H, 1, D], over a `RingKVCache` ring keys/values
    [B, H, S, D] that already holds this query's key; `next_offset` is the ring's counter after
    that write, `tickets` an `attention_tickets(B, H)` array. Softmax and sums in float32; result
    [B, H, 1, D] in q's dtype."""
    b, h, _, d = q.shape
    s = keys.shape[2]
    out, _ = _attn_kernel(float(scale))(
        inputs=[q, keys, values, next_offset, tickets],
        template=[("T", q.dtype), ("D", d), ("S", s), ("NWARPS", ATTN_WARPS), ("UNROLL", ATTN_UNROLL),
                  ("SPLITS", ATTN_SPLITS)],
        grid=(32 * ATTN_WARPS, b * h * ATTN_SPLITS, 1),
        threadgroup=(32 * ATTN_WARPS, 1, 1),
        output_shapes=[q.shape, (b * h, ATTN_SPLITS, d + 2)],
        output_dtypes=[q.dtype, mx.float32],
    )
    return out
