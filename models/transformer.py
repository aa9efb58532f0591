"""The LM's temporal ("main") transformer: a stack of pre-norm RoPE layers over ring KV caches."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ppchat.models import cuda_kernels
from ppchat.models.kv_cache import RingKVCache
from ppchat.models.layers import GatedFFN, RMSNorm, RopeAttention, StackStep


class TransformerLayer(nn.Module):
    """`h = x + attn(norm1(x)); out = h + gating(norm2(h))` (spec §4.2)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, max_period: float, norm_eps: float):
        super().__init__()
        self.norm1 = RMSNorm(dim, norm_eps)
        self.self_attn = RopeAttention(dim, num_heads, max_period)
        self.norm2 = RMSNorm(dim, norm_eps)
        self.gating = GatedFFN(dim, hidden)

    def __call__(self, x: mx.array, cache: RingKVCache, shared: StackStep | None = None) -> mx.array:
        x = x + self.self_attn(self.norm1(x), cache, shared)
        return x + self.gating(self.norm2(x))


class Transformer(nn.Module):
    """Causal layer stack; each layer owns one `RingKVCache` from `make_cache()`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        hidden: int,
        context: int,
        max_period: float,
        norm_eps: float,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.context = context
        self.layers = [TransformerLayer(dim, num_heads, hidden, max_period, norm_eps) for _ in range(num_layers)]

    def make_cache(
        self, batch_size: int = 1, dtype: mx.Dtype = mx.float32, bits: int | None = None, per_row: bool = False
    ) -> list[RingKVCache]:
        """Fresh (reset) caches, `bits=8` for 8-bit rings, `per_row` for a batch of conversations
        (`RingKVCache`). The layers share one ticket array of the CUDA ring-attention kernel, made
        here, outside any compiled graph, and owned by the caches (two stacks of caches never share)."""
        tickets = cuda_kernels.attention_tickets(batch_size, self.num_heads) if cuda_kernels.available() else None
        return [
            RingKVCache(batch_size, self.num_heads, self.head_dim, self.context, dtype, bits,
                        per_row=per_row, tickets=tickets)
            for _ in self.layers
        ]

    def __call__(self, x: mx.array, cache: list[RingKVCache]) -> mx.array:
        """x: [B, T, dim] input embeddings at the next T positions of `cache` -> [B, T, dim]."""
        if not cache:
            return x
        # Every layer's ring holds the same positions: one mask (and for a single token, one write
        # slot and counter) serves the whole stack.
        shared = StackStep.for_cache(cache[0], x.shape[1])
        for layer, layer_cache in zip(self.layers, cache):
            x = layer(x, layer_cache, shared)
        return x
