"""Mimi's encoder/decoder transformer (moshi `ProjectedTransformer` with equal in/out dims, so no projections).

Pre-norm layers: LayerNorm(eps 1e-5, with bias), self-attention with interleaved RoPE, exact-erf GELU MLP
without biases, and a learnt per-channel layer scale on both residual branches. Attention is causal and
limited to `context` steps. Activations are `[B, T, d_model]`.

Streaming keeps a ring KV cache of exactly `context` slots per layer and reproduces the reference's
`RingKVCache` bookkeeping, quirks included:
* a chunk's new keys are all written before it attends, so its earlier queries lose the keys it overwrote;
* the slot the next write will hit is labelled with position `end` (a future one) instead of its real,
  oldest position `end - context` (the `delta <= 0` branch of `RingKVCache.complete`), so once the ring
  is full that key is always masked.
With 2-step chunks and a full ring, the first query of a chunk therefore sees `context - 2` keys and the
second `context - 1` (spec §4.4 says `context - 1` and `context`, overlooking the second quirk; the
lm_tiny fixture, which wraps the same ring class, confirms it). The whole-signal path has no ring and
sees `context` keys, which is why the two paths differ once a stream outgrows the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ppchat.models.layers import pick


@dataclass(frozen=True)
class MimiTransformerConfig:
    """The `transformer` kwargs of the reference that change the network."""

    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    context: int
    max_period: float

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


class LayerScale(nn.Module):
    """Learnt per-channel scale of a residual branch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


class MimiAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (rows: q|k|v, then head, then head_dim)."""

    def __init__(self, cfg: MimiTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.reset()

    def _project(self, x: mx.array, offset: int | mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v [B, H, T, head_dim]; `offset` is 0 or each row's position [B]."""
        cfg = self.cfg
        b, t, _ = x.shape
        qkv = self.in_proj(x).reshape(b, t, 3, cfg.num_heads, cfg.head_dim).transpose(0, 2, 3, 1, 4)
        # Interleaved pairs (2i, 2i+1), as PyTorch moshi rotates them; q and k in one kernel, each row
        # at its own position (RoPE takes the offsets along the leading axis).
        qk = mx.fast.rope(qkv[:, :2], cfg.head_dim, traditional=True, base=cfg.max_period, scale=1.0, offset=offset)
        return pick(qk, 0, 1), pick(qk, 1, 1), pick(qkv, 2, 1)

    def _attend(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array) -> mx.array:
        b, _, t, _ = q.shape
        scale = self.cfg.head_dim**-0.5
        if mx.default_device() == mx.gpu and mx.metal.is_available():
            # Metal has a fused kernel for a few masked float32 queries.
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        else:
            # CUDA (no fused kernel takes a mask on float32) and the CPU run MLX's fallback; this is
            # that fallback less its separate `q * scale` kernel: the scale rides in the mask's select
            # (one fused kernel under `mx.compile`). For Mimi's head size 64 the scale is 1/8, a power
            # of two, so s * (q.k) is bit for bit (s * q).k.
            scores = q @ k.swapaxes(-1, -2)
            scores = mx.where(mask, scores * scale, mx.finfo(scores.dtype).min)
            out = mx.softmax(scores, axis=-1, precise=True) @ v
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, self.cfg.d_model))

    def __call__(self, x: mx.array) -> mx.array:
        """Whole sequence from position 0: query i sees keys j with 0 <= i - j < context."""
        q, k, v = self._project(x, 0)
        pos = mx.arange(x.shape[1])
        delta = pos[:, None] - pos[None, :]
        return self._attend(q, k, v, (delta >= 0) & (delta < self.cfg.context))

    def reset(self, batch_size: int = 1) -> None:
        cfg = self.cfg
        shape = (batch_size, cfg.num_heads, cfg.context, cfg.head_dim)
        self._keys = mx.zeros(shape)
        self._values = mx.zeros(shape)

    def step(self, x: mx.array, offset: mx.array, ring: tuple[mx.array, mx.array] | None = None) -> mx.array:
        """One chunk of fewer than `context` steps whose first step is at absolute position `offset` [B].

        `ring` is `ring_slots_and_mask(offset, T, context)`, the same for every layer (so the stack
        computes it once per step); computed here when not given."""
        b = x.shape[0]
        slots, mask = ring if ring is not None else ring_slots_and_mask(offset, x.shape[1], self.cfg.context)
        q, k, v = self._project(x, offset)
        # put_along_axis is one kernel; `keys[:, :, slots, :] = k` would add arange index arrays.
        where = slots.reshape(b, 1, -1, 1)
        self._keys = mx.put_along_axis(self._keys, where, k, axis=2)
        self._values = mx.put_along_axis(self._values, where, v, axis=2)
        return self._attend(q, self._keys, self._values, mask)


def ring_slots_and_mask(offset: mx.array, t: int, capacity: int) -> tuple[mx.array, mx.array]:
    """Slots [B, T] that a chunk of `t` steps at each row's `offset` [B] writes, and its visibility mask
    [B, 1, T, capacity] over the ring after that write (True where visible), with the reference's slot
    labels."""
    pos_q = offset[:, None] + mx.arange(t)
    # Position of each slot as the reference labels it (see the module docstring), -1 if never written.
    end = (offset + t)[:, None]
    slot = mx.arange(capacity)
    delta = slot - end % capacity
    pos_k = mx.where(delta <= 0, end + delta, end + delta - capacity)
    pos_k = mx.where(slot >= end, -1, pos_k)
    age = pos_q[:, :, None] - pos_k[:, None, :]
    mask = (pos_k[:, None, :] >= 0) & (age >= 0) & (age < capacity)
    return pos_q % capacity, mask[:, None]


class MimiTransformerLayer(nn.Module):
    """Pre-norm block: x + ls1 * attn(norm1(x)), then x + ls2 * linear2(gelu(linear1(norm2(x))))."""

    def __init__(self, cfg: MimiTransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.self_attn = MimiAttention(cfg)
        self.layer_scale_1 = LayerScale(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model, bias=False)
        self.layer_scale_2 = LayerScale(cfg.d_model)

    def _feed_forward(self, x: mx.array) -> mx.array:
        # nn.gelu is the exact erf form, as torch's F.gelu default.
        return x + self.layer_scale_2(self.linear2(nn.gelu(self.linear1(self.norm2(x)))))

    def __call__(self, x: mx.array) -> mx.array:
        return self._feed_forward(x + self.layer_scale_1(self.self_attn(self.norm1(x))))

    def step(self, x: mx.array, offset: mx.array, ring: tuple[mx.array, mx.array] | None = None) -> mx.array:
        return self._feed_forward(x + self.layer_scale_1(self.self_attn.step(self.norm1(x), offset, ring)))


class MimiTransformer(nn.Module):
    """Stack of layers with one position counter (RoPE and the ring advance together)."""

    def __init__(self, cfg: MimiTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = [MimiTransformerLayer(cfg) for _ in range(cfg.num_layers)]
        self.reset()

    def __call__(self, x: mx.array) -> mx.array:
        """Whole sequence `[B, T, d_model]`, positions from 0, independent of the streaming state."""
        for layer in self.layers:
            x = layer(x)
        return x

    def reset(self, batch_size: int = 1) -> None:
        """Empty every KV ring and restart positions at 0 (one position per row)."""
        self._offset = mx.zeros((batch_size,), dtype=mx.int32)
        for layer in self.layers:
            layer.self_attn.reset(batch_size)

    def step(self, x: mx.array) -> mx.array:
        """Next chunk `[B, T, d_model]` of the stream, `T < context`."""
        t = x.shape[1]
        if t >= self.cfg.context:
            # The reference would leave the chunk's first query with no visible key at all (NaN).
            raise ValueError(f"a streaming chunk of {t} steps needs a context above {t}, not {self.cfg.context}")
        if t == 0:
            return x
        ring = ring_slots_and_mask(self._offset, t, self.cfg.context)  # shared by every layer
        for layer in self.layers:
            x = layer.step(x, self._offset, ring)
        self._offset = self._offset + t
        return x
