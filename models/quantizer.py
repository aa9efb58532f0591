"""Mimi's split residual vector quantizer (moshi `quantization/vq.py` and `core_vq.py`).

`rvq_first` (1 semantic codebook) and `rvq_rest` (the acoustic codebooks) both quantize the SAME latent,
each through its own 1x1 input projection; decoding sums their outputs, each after its own output
projection. Only the codebooks in use are built. Everything is float32 and latents are `[B, T, D]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ppchat.models.layers import stack_columns


@dataclass(frozen=True)
class QuantizerConfig:
    """The `quantizer` kwargs of the reference."""

    dimension: int
    n_q: int
    bins: int
    input_dimension: int
    output_dimension: int


class EuclideanCodebook(nn.Module):
    """One codebook; `embedding` is the reference's `embedding_sum / clamp(cluster_usage, 1e-5)`."""

    def __init__(self, bins: int, dimension: int) -> None:
        super().__init__()
        self.embedding = mx.zeros((bins, dimension))

    def encode(self, x: mx.array) -> mx.array:
        """Index of the nearest vector by Euclidean distance, `[..., D]` -> `[...]` uint32 (MLX's
        argmax type; a gather takes it as is, and `SplitResidualVectorQuantizer` casts all codes in one
        pass)."""
        # |x - e|^2 = |x|^2 - 2 (x.e - |e|^2 / 2): |x|^2 is the same for every candidate.
        return mx.argmax(x @ self.embedding.T - self.half_norms(), axis=-1)

    def half_norms(self) -> mx.array:
        """|e|^2 / 2 of every vector, computed (and evaluated) once per embedding array, so that a
        compiled encode reads it as a constant instead of recomputing it every frame (a multiply and a
        reduction per codebook)."""
        cached = self.__dict__.get("_half_norms")
        if cached is None or cached[0] is not self.embedding:
            e = self.embedding
            norms = 0.5 * mx.sum(e * e, axis=-1)
            mx.eval(norms)
            cached = self.__dict__["_half_norms"] = (e, norms)
        return cached[1]

    def decode(self, codes: mx.array) -> mx.array:
        return self.embedding[codes]


class ResidualVectorQuantizer(nn.Module):
    """Input projection, residual quantization over `n_codebooks`, output projection (1x1 convs without bias)."""

    def __init__(self, cfg: QuantizerConfig, n_codebooks: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(cfg.input_dimension, cfg.dimension, bias=False)
        self.output_proj = nn.Linear(cfg.dimension, cfg.output_dimension, bias=False)
        self.codebooks = [EuclideanCodebook(cfg.bins, cfg.dimension) for _ in range(n_codebooks)]

    def encode_codes(self, x: mx.array) -> list[mx.array]:
        """Latent `[B, T, input_dimension]` -> each codebook's codes `[B, T]` (uint32)."""
        residual = self.input_proj(x)
        codes = []
        for codebook in self.codebooks:
            c = codebook.encode(residual)
            residual = residual - codebook.decode(c)
            codes.append(c)
        return codes

    def encode(self, x: mx.array) -> mx.array:
        """Latent `[B, T, input_dimension]` -> codes `[B, n_codebooks, T]` int32."""
        return stack_columns(self.encode_codes(x))

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, n_codebooks, T]` -> latent `[B, T, output_dimension]`."""
        quantized = self.codebooks[0].decode(codes[:, 0])
        for i, codebook in enumerate(self.codebooks[1:], start=1):
            quantized = quantized + codebook.decode(codes[:, i])
        return self.output_proj(quantized)


class SplitResidualVectorQuantizer(nn.Module):
    """Codes are `[first(1), rest(num_codebooks - 1)]` along axis 1."""

    def __init__(self, cfg: QuantizerConfig, num_codebooks: int) -> None:
        super().__init__()
        if not 1 <= num_codebooks <= cfg.n_q:
            raise ValueError(f"num_codebooks must be in 1..{cfg.n_q}, got {num_codebooks}")
        self.num_codebooks = num_codebooks
        self.rvq_first = ResidualVectorQuantizer(cfg, 1)
        self.rvq_rest = ResidualVectorQuantizer(cfg, num_codebooks - 1)

    def encode(self, x: mx.array) -> mx.array:
        """Latent `[B, T, D]` -> codes `[B, num_codebooks, T]` int32."""
        codes = self.rvq_first.encode_codes(x)
        if self.num_codebooks > 1:
            codes += self.rvq_rest.encode_codes(x)
        # One pass (a fused kernel when compiled) for the casts and the stack of all the codebooks.
        return stack_columns(codes)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, num_codebooks, T]` -> latent `[B, T, D]`."""
        latent = self.rvq_first.decode(codes[:, :1])
        if self.num_codebooks == 1:
            return latent
        return latent + self.rvq_rest.decode(codes[:, 1:])
