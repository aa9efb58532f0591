"""Fused kernels for MLX's CUDA backend, where a streaming step is bound by kernel count.

At batch 1 on an H100 a frame launches ~3000 kernels, and each costs ~10 µs of host dispatch, far
more than its GPU time (BENCHMARKS.md, "Trace"). These kernels do in one launch what MLX's stock
ops need several for. Each is used only where `available()` (MLX's CUDA backend is the default
device); every other backend keeps the plain MLX form, which the parity tests check.

* `rms_norm`: the reference `rms_norm_f32` on a bf16 input in one kernel (cast to float32, mean of
  squares, `x * (alpha * rsqrt(v + eps))`, one rounding back), where the MLX form needs a cast in, a
  norm and a cast out (three kernels; feeding bf16 to `mx.fast.rms_norm` instead would round twice).
* `ring_attention`: writes one token's key/value into a `RingKVCache` ring (bf16, or 8-bit codes)
  and attends its query over the ring, with the ring's visibility rule (`kv_cache.py`) computed in
  the kernel from the position counter. MLX's fused decode attention takes no mask, so a masked one
  falls back to ~6 kernels per layer (scores, mask select, softmax, values, casts) plus the mask's
  own and two scatters for the write; this is one kernel per layer.
"""

from __future__ import annotations

from functools import cache

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


@cache
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
# one launch. The block whose range holds this token's slot also writes the token's key and value
# into the ring (int8 codes and scale for an 8-bit ring, with `kv_cache.quantize_rows`' arithmetic),
# which saves the separate scatter kernels; every block takes that slot's values from the inputs,
# never from the ring. `tickets` and the ring are written in place: the ring belongs to one layer's
# cache, the tickets to one layer stack, and successive calls on them are ordered by data
# dependencies (layer after layer, frame after frame).
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
    // Position of this query (and of its key): the ring's counter, or its row's for a per-row ring.
    const int last = static_cast<int>(offset[PER_ROW ? bh / HEADS : 0]) - 1;
    const int cur = last % S;                          // the slot its key goes to
    const int lo = split * CHUNK;
    const int hi = min(S, lo + CHUNK);
    const size_t row = static_cast<size_t>(bh) * D + lane * PER_LANE;
    float qf[PER_LANE];
    float kcur[PER_LANE];
    float vcur[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        qf[i] = static_cast<float>(q[row + i]) * SCALE;
        kcur[i] = static_cast<float>(k_new[row + i]);
        vcur[i] = static_cast<float>(v_new[row + i]);
    }
//QUANTIZE_CURRENT
    const size_t head = static_cast<size_t>(bh) * S;
    if (lo <= cur && cur < hi && warp == 0) {
//WRITE_CURRENT
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
            if (j == cur) {
#pragma unroll
                for (int i = 0; i < PER_LANE; ++i) {
                    dot += qf[i] * kcur[i];
                    vals[u][i] = vcur[i];
                }
            } else if (j < hi) {
                const size_t at = (head + j) * D + lane * PER_LANE;
//LOAD_SLOT
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
        mine[d] = num;  // acc[0..D-1], then the sum at D
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

_PLAIN = {
    "//QUANTIZE_CURRENT": "",
    "//WRITE_CURRENT": """
        T* kdst = const_cast<T*>(keys) + (head + cur) * D + lane * PER_LANE;
        T* vdst = const_cast<T*>(values) + (head + cur) * D + lane * PER_LANE;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            kdst[i] = static_cast<T>(kcur[i]);
            vdst[i] = static_cast<T>(vcur[i]);
        }""",
    "//LOAD_SLOT": """
#pragma unroll
                for (int i = 0; i < PER_LANE; ++i) {
                    dot += qf[i] * static_cast<float>(keys[at + i]);
                    vals[u][i] = static_cast<float>(values[at + i]);
                }""",
}

# 8-bit ring: the token's row is quantised exactly as `kv_cache.quantize_rows` does (IEEE division,
# round half to even, clip to +-127), and attention uses its dequantised values, as the MLX path does.
_QUANT = {
    "//QUANTIZE_CURRENT": """
    float kmax = 0.0f;
    float vmax = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        kmax = fmaxf(kmax, fabsf(kcur[i]));
        vmax = fmaxf(vmax, fabsf(vcur[i]));
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
        kmax = fmaxf(kmax, __shfl_xor_sync(0xffffffffu, kmax, o));
        vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, o));
    }
    const float kscale = __fdiv_rn(kmax, 127.0f);
    const float vscale = __fdiv_rn(vmax, 127.0f);
    signed char kcode[PER_LANE];
    signed char vcode[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const float kc = fminf(fmaxf(rintf(__fdiv_rn(kcur[i], kscale > 0.0f ? kscale : 1.0f)), -127.0f), 127.0f);
        const float vc = fminf(fmaxf(rintf(__fdiv_rn(vcur[i], vscale > 0.0f ? vscale : 1.0f)), -127.0f), 127.0f);
        kcode[i] = static_cast<signed char>(kc);
        vcode[i] = static_cast<signed char>(vc);
        kcur[i] = kc * kscale;
        vcur[i] = vc * vscale;
    }""",
    "//WRITE_CURRENT": """
        signed char* kdst = const_cast<signed char*>(reinterpret_cast<const signed char*>(keys)) + (head + cur) * D + lane * PER_LANE;
        signed char* vdst = const_cast<signed char*>(reinterpret_cast<const signed char*>(values)) + (head + cur) * D + lane * PER_LANE;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            kdst[i] = kcode[i];
            vdst[i] = vcode[i];
        }
        if (lane == 0) {
            const_cast<float*>(key_scales)[head + cur] = kscale;
            const_cast<float*>(value_scales)[head + cur] = vscale;
        }""",
    "//LOAD_SLOT": """
                const float ks = key_scales[head + j];
                const float vs = value_scales[head + j];
#pragma unroll
                for (int i = 0; i < PER_LANE; ++i) {
                    dot += qf[i] * (static_cast<float>(keys[at + i]) * ks);
                    vals[u][i] = static_cast<float>(values[at + i]) * vs;
                }""",
}


def _attention_source(quantized: bool) -> str:
    source = _ATTN_SOURCE
    for marker, text in (_QUANT if quantized else _PLAIN).items():
        source = source.replace(marker, text.strip("\n"))
    return source


@cache
def _attn_kernel(scale: float, quantized: bool):
    source = f"    constexpr float SCALE = {scale!r}f;\n" + _attention_source(quantized)
    ring = ["keys", "key_scales", "values", "value_scales"] if quantized else ["keys", "values"]
    return mx.fast.cuda_kernel(
        name=f"ppchat_ring_attention_{'q8' if quantized else 'plain'}_{abs(hash(scale)) % 10**8}",
        input_names=["q", "k_new", "v_new", *ring, "offset", "tickets"],
        output_names=["out", "partial"],
        source=source,
    )


def fits_ring_attention(q: mx.array) -> bool:
    """Head sizes the kernel handles: a multiple of 32 (a lane per D/32 dims), at most 256."""
    return q.shape[-1] % 32 == 0 and q.shape[-1] <= 256


def attention_tickets(batch: int, heads: int) -> mx.array:
    """The zeroed ticket array `ring_attention` needs, one per layer stack (kept, reused every step)."""
    return mx.zeros((batch * heads,), dtype=mx.int32)


def ring_attention(
    q: mx.array, k: mx.array, v: mx.array, cache, next_offset: mx.array, scale: float, tickets: mx.array
) -> mx.array:
    """Write this token's key/value `k`, `v` [B, H, 1, D] into `cache` (a `RingKVCache`, bf16 or
    8-bit) at slot `(next_offset - 1) % S`, in place, and attend q [B, H, 1, D] over the ring with
    its visibility rule; `next_offset` is the ring's counter after this token ([B] for a per-row
    ring: each row attends at its own position), `tickets` an
    `attention_tickets(B, H)` array. Softmax and sums in float32; result [B, H, 1, D] in q's dtype.
    The caller still advances the cache's counter (`cache.update(..., written=True)`)."""
    b, h, _, d = q.shape
    s = cache.keys.shape[2]
    quantized = bool(cache.bits)
    ring = [cache.keys, cache.key_scales, cache.values, cache.value_scales] if quantized else [cache.keys, cache.values]
    out, _ = _attn_kernel(float(scale), quantized)(
        inputs=[q, k, v, *ring, next_offset, tickets],
        template=[("T", q.dtype), ("D", d), ("S", s), ("NWARPS", ATTN_WARPS), ("UNROLL", ATTN_UNROLL),
                  ("SPLITS", ATTN_SPLITS), ("HEADS", h), ("PER_ROW", bool(cache.per_row))],
        grid=(32 * ATTN_WARPS, b * h * ATTN_SPLITS, 1),
        threadgroup=(32 * ATTN_WARPS, 1, 1),
        output_shapes=[q.shape, (b * h, ATTN_SPLITS, d + 2)],
        output_dtypes=[q.dtype, mx.float32],
    )
    return out
