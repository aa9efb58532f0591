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
