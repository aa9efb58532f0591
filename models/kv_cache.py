"""Preallocated ring KV cache for the LM's temporal transformer.

Like the reference `RingKVCache`, it keeps exactly `context` slots. Positions are absolute (since the
last reset) and never wrapped: they also drive RoPE.

Visibility: query position `p_q` sees key position `p_k` iff that key was written and
`0 <= p_q - p_k < context - 1`. Spec §4.2 says `< context`, but the reference's position bookkeeping
(`RingKVCache.complete`, its `delta <= 0` branch) gives the oldest slot of a full ring the position
`end_offset`, i.e. a future one, so that key is always masked: once the ring has filled, each query
sees `context - 1` keys. The lm_tiny fixture (context 40, 61 calls) confirms this: with
`< context` the logits diverge from call 40 on.

Writes are always consecutive positions from 0, so the position held by every slot is a function of
the position counter alone (`positions`); no per-slot position array is stored or scattered. Every
layer's ring holds the same positions, so a layer stack plans a single-token step once (`plan`: the
slot to write and the next counter; with `mask_for`, the mask) and every layer reuses them: on the GPU each
kernel has a fixed cost, and this removes ~8 per layer. The write is a one-row `put_along_axis`
at the planned slot (one ScatterAxis kernel): MLX's CUDA `slice_update` with a dynamic offset takes
~70 µs per call (an offset kernel and a slow strided copy), and `keys[:, :, slot, :] = k` builds a
scatter with arange index arrays for the sliced axes (five kernels).

All state lives in `mx.array`s (including the position counter), so a live step can be wrapped in
`mx.compile` with `cache.state` as captured state and no host synchronisation.

A ring built `per_row` keeps one counter per batch row ([B] instead of a scalar): each row is its own
conversation, started at its own time (`models/batch.py` moves a conversation's B=1 ring into a row
with `load_row`). Masks are then [B, 1, T, S] and each row writes its own slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass(frozen=True)
class RingStep:
    """What a single-token step does to every ring of a stack: write at `slot` ([1] int32), then
    hold `next_offset` tokens (attention's mask is `mask_for(1)`, taken before the step)."""

    slot: mx.array
    next_offset: mx.array


def ring_positions(end: mx.array, context: int) -> mx.array:
    """Absolute position held by each of `context` slots after positions 0..end-1 were written in
    order (slot `p % context` holds `p`); -1 for a slot never written. `end` [] -> [S]; [B] -> [B, S]."""
    slot = mx.arange(context, dtype=mx.int32)
    last = (end[..., None] if end.ndim else end) - 1
    pos = last - mx.remainder(last - slot, context)
    return mx.where(pos >= 0, pos, -1)


def quantize_rows(x: mx.array) -> tuple[mx.array, mx.array]:
    """Symmetric 8-bit codes of each row (last axis) of `x`: (int8 codes, float32 scale [..., 1]) with
    `x ≈ codes * scale`, scale = max|row| / 127, codes rounded half to even. The CUDA ring-attention
    kernel quantises the rows it writes with the same arithmetic, so both paths store the same bytes."""
    xf = x.astype(mx.float32)
    scale = mx.max(mx.abs(xf), axis=-1, keepdims=True) / 127.0
    codes = mx.clip(mx.round(xf / mx.where(scale > 0, scale, 1.0)), -127, 127).astype(mx.int8)
    return codes, scale


class RingKVCache:
    """`context` slots of keys/values per layer; slot `p % context` holds absolute position `p`.

    With `bits=8` the ring stores int8 codes and a float32 scale per (head, slot) row (`quantize_rows`)
    instead of `dtype` values: half the memory of bf16 (1.57 GB -> 0.81 GB for the 7B's 32 layers).
    Attention then reads the dequantized ring (`ring()`), or the codes directly in the CUDA kernel.
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        context: int,
        dtype: mx.Dtype,
        bits: int | None = None,
        *,
        per_row: bool = False,
        tickets: mx.array | None = None,
    ):
        """`per_row`: one position counter per row (see the module docstring). `tickets`: the CUDA
        ring-attention kernel's ticket array of the layer stack this ring belongs to
        (`cuda_kernels.attention_tickets`), shared by its layers; None where the kernel is not used."""
        if bits not in (None, 8):
            raise ValueError(f"KV cache bits must be None (no quantisation) or 8, not {bits!r}")
        self.context = context
        self.dtype = dtype
        self.bits = bits
        shape = (batch_size, num_heads, context, head_dim)
        store = mx.int8 if bits else dtype
        self.keys = mx.zeros(shape, dtype=store)
        self.values = mx.zeros(shape, dtype=store)
        scales = (batch_size, num_heads, context, 1)
        self.key_scales = mx.zeros(scales, dtype=mx.float32) if bits else None
        self.value_scales = mx.zeros(scales, dtype=mx.float32) if bits else None
        self.per_row = per_row
        self.tickets = tickets
        # Absolute position of the next token to be written (= number of tokens seen since reset).
        self.offset = mx.zeros((batch_size,), dtype=mx.int32) if per_row else mx.array(0, dtype=mx.int32)

    @property
    def state(self) -> list[mx.array]:
        """The arrays that change per update (for `mx.eval` / `mx.compile` state capture)."""
        if self.bits:
            return [self.keys, self.key_scales, self.values, self.value_scales, self.offset]
        return [self.keys, self.values, self.offset]

    @state.setter
    def state(self, arrays: list[mx.array]) -> None:
        if self.bits:
            self.keys, self.key_scales, self.values, self.value_scales, self.offset = arrays
        else:
            self.keys, self.values, self.offset = arrays

    def ring(self) -> tuple[mx.array, mx.array]:
        """Keys and values of every slot in `dtype` (dequantized when the ring is 8-bit)."""
        if not self.bits:
            return self.keys, self.values
        return (
            (self.keys.astype(mx.float32) * self.key_scales).astype(self.dtype),
            (self.values.astype(mx.float32) * self.value_scales).astype(self.dtype),
        )

    @property
    def positions(self) -> mx.array:
        """Absolute position stored in each slot, -1 while the slot has never been written."""
        return ring_positions(self.offset, self.context)

    def mask_for(self, t: int) -> mx.array:
        """Visibility [T, S] for the next `t` tokens, as `update` will lay out the keys: True where a key
        is visible. For `t == 1`, S is the ring; otherwise the ring as it was followed by the chunk."""
        query_pos = self._row_offset() + mx.arange(t, dtype=mx.int32)
        if t == 1:
            key_pos = ring_positions(self.offset + 1, self.context)
        else:
            key_pos = mx.concatenate([self.positions, query_pos], axis=-1)
        delta = query_pos[..., :, None] - key_pos[..., None, :]
        mask = (key_pos[..., None, :] >= 0) & (delta >= 0) & (delta < self.context - 1)
        return mask[:, None] if self.per_row else mask

    def _row_offset(self) -> mx.array:
        """The counter, broadcastable against a [T] axis of positions ([B, 1] per row)."""
        return self.offset[:, None] if self.per_row else self.offset

    def plan(self) -> RingStep:
        """The single-token step from this ring's counter (the same for every ring of a stack)."""
        return RingStep(mx.remainder(self.offset, self.context).reshape(-1), self.offset + 1)

    def update(
        self, keys: mx.array, values: mx.array, step: RingStep | None = None, *, written: bool = False
    ) -> tuple[mx.array, mx.array]:
        """Append T new keys/values ([B, H, T, hd], positions `offset..offset+T-1`) and return the
        keys/values to attend over, laid out as `mask_for(T)` (taken before this call) describes.
        `step` is `plan()` of this ring or of a ring in the same state (single tokens only);
        `written` says the token's key/value are already in the ring (the CUDA ring-attention kernel
        writes them itself), so only the counter advances."""
        t = keys.shape[2]
        if t == 1:
            step = step or self.plan()
            # Writing first is exact for a single token: the key it overwrites is `context` steps
            # old, which the mask hides anyway.
            if not written:
                self._write(step.slot.reshape(-1, 1, 1, 1), keys, values)
            self.offset = step.next_offset
            return self.ring()
        # A chunk may overwrite keys that its own earlier queries still need, so attend over the
        # ring as it was plus the whole chunk, and write afterwards.
        ring_keys, ring_values = self.ring()
        all_keys = mx.concatenate([ring_keys, keys], axis=2)
        all_values = mx.concatenate([ring_values, values], axis=2)
        self._write_chunk(keys, values)
        self.offset = self.offset + t
        return all_keys, all_values

    def _write(self, slots: mx.array, keys: mx.array, values: mx.array) -> None:
        """Store keys/values [B, H, T, hd] at `slots` [1, 1, T, 1] (one ScatterAxis per array)."""
        if not self.bits:
            self.keys = mx.put_along_axis(self.keys, slots, keys, axis=2)
            self.values = mx.put_along_axis(self.values, slots, values, axis=2)
            return
        key_codes, key_scales = quantize_rows(keys)
        value_codes, value_scales = quantize_rows(values)
        self.keys = mx.put_along_axis(self.keys, slots, key_codes, axis=2)
        self.key_scales = mx.put_along_axis(self.key_scales, slots, key_scales, axis=2)
        self.values = mx.put_along_axis(self.values, slots, value_codes, axis=2)
        self.value_scales = mx.put_along_axis(self.value_scales, slots, value_scales, axis=2)

    def _write_chunk(self, keys: mx.array, values: mx.array) -> None:
        # Only the last `context` tokens of a long chunk survive in the ring.
        t = keys.shape[2]
        keep = min(t, self.context)
        positions = self._row_offset() + mx.arange(t - keep, t, dtype=mx.int32)
        slots = mx.remainder(positions, self.context)
        self._write(slots.reshape(-1, 1, keep, 1), keys[:, :, -keep:], values[:, :, -keep:])

    def load_row(self, row: int, source: RingKVCache) -> None:
        """Make row `row` of this per-row ring a copy of the one-row ring `source` (keys, values,
        scales and counter): a conversation prepared alone joins a batch."""
        if not self.per_row or source.keys.shape[0] != 1 or source.bits != self.bits:
            raise ValueError("load_row copies a one-row ring of the same precision into a per-row ring")
        mine, theirs = self.state, source.state
        for index, (a, b) in enumerate(zip(mine[:-1], theirs[:-1])):
            a[row : row + 1] = b
            mine[index] = a
        mine[-1][row] = theirs[-1]
        self.state = mine
