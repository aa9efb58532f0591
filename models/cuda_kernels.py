"""Fused kernels for MLX's CUDA backend, where a streaming step is bound by kernel count.

At batch 1 on an H100 a frame launches ~3000 kernels, and each costs ~10 µs of host dispatch, far
more than its GPU time (BENCHMARKS.md, "Trace"). These kernels do in one launch what MLX's stock
ops need several for. Each is used only where `available()` (MLX's CUDA backend is the default
device); every other backend keeps the plain MLX form, which the parity tests check.

* `rms_norm`: the reference `rms_norm_f32` on a bf16 input in one kernel (cast to float32, mean of
  squares, `x * (alpha * rsqrt(v + eps))`, one rounding back), where the MLX form needs a cast in, a
  norm and a cast out (three kernels; feeding bf16 to `mx.fast.rms_norm` instead would round twice).
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
