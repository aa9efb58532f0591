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
slot to write, the mask, the next counter) and every layer's `update` reuses it: on the GPU each
kernel has a fixed cost, and this removes ~8 per layer. The write is a one-row `put_along_axis`
at the planned slot (one ScatterAxis kernel): MLX's CUDA `slice_update` with a dynamic offset takes
~70 µs per call (an offset kernel and a slow strided copy), and `keys[:, :, slot, :] = k` builds a
scatter with arange index arrays for the sliced axes (five kernels).

All state lives in `mx.array`s (including the position counter), so a live step can be wrapped in
`mx.compile` with `cache.state` as captured state and no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass(frozen=True)
class RingStep:
    """What a single-token step does to every ring of a stack: write at `slot` ([1] int32), attend
    with `mask` ([1, context], True where visible), then hold `next_offset` tokens."""

    slot: mx.array
    mask: mx.array
    next_offset: mx.array


def ring_positions(end: mx.array, context: int) -> mx.array:
    """Absolute position held by each of `context` slots after positions 0..end-1 were written in
    order (slot `p % context` holds `p`); -1 for a slot never written."""
    slot = mx.arange(context, dtype=mx.int32)
    last = end - 1
    pos = last - mx.remainder(last - slot, context)
    return mx.where(pos >= 0, pos, -1)


class RingKVCache:
    """`context` slots of keys/values per layer; slot `p % context` holds absolute position `p`."""

    def __init__(self, batch_size: int, num_heads: int, head_dim: int, context: int, dtype: mx.Dtype):
        self.context = context
        self.keys = mx.zeros((batch_size, num_heads, context, head_dim), dtype=dtype)
        self.values = mx.zeros((batch_size, num_heads, context, head_dim), dtype=dtype)
        # Absolute position of the next token to be written (= number of tokens seen since reset).
        self.offset = mx.array(0, dtype=mx.int32)

    @property
    def state(self) -> list[mx.array]:
        """The arrays that change per update (for `mx.eval` / `mx.compile` state capture)."""
        return [self.keys, self.values, self.offset]

    @state.setter
    def state(self, arrays: list[mx.array]) -> None:
        self.keys, self.values, self.offset = arrays

    @property
    def positions(self) -> mx.array:
        """Absolute position stored in each slot, -1 while the slot has never been written."""
        return ring_positions(self.offset, self.context)

    def mask_for(self, t: int) -> mx.array:
        """Visibility [T, S] for the next `t` tokens, as `update` will lay out the keys: True where a key
        is visible. For `t == 1`, S is the ring; otherwise the ring as it was followed by the chunk."""
        query_pos = self.offset + mx.arange(t, dtype=mx.int32)
        if t == 1:
            key_pos = ring_positions(self.offset + 1, self.context)
        else:
            key_pos = mx.concatenate([self.positions, query_pos])
        delta = query_pos[:, None] - key_pos[None, :]
        return (key_pos[None, :] >= 0) & (delta >= 0) & (delta < self.context - 1)

    def plan(self) -> RingStep:
        """The single-token step from this ring's counter (the same for every ring of a stack)."""
        return RingStep(mx.remainder(self.offset, self.context).reshape(1), self.mask_for(1), self.offset + 1)

    def update(self, keys: mx.array, values: mx.array, step: RingStep | None = None) -> tuple[mx.array, mx.array]:
        """Append T new keys/values ([B, H, T, hd], positions `offset..offset+T-1`) and return the
        keys/values to attend over, laid out as `mask_for(T)` (taken before this call) describes.
        `step` is `plan()` of this ring or of a ring in the same state (single tokens only)."""
        t = keys.shape[2]
        if t == 1:
            step = step or self.plan()
            # Writing first is exact for a single token: the key it overwrites is `context` steps
            # old, which the mask hides anyway.
            slot = step.slot.reshape(1, 1, 1, 1)
            self.keys = mx.put_along_axis(self.keys, slot, keys, axis=2)
            self.values = mx.put_along_axis(self.values, slot, values, axis=2)
            self.offset = step.next_offset
            return self.keys, self.values
        # A chunk may overwrite keys that its own earlier queries still need, so attend over the
        # ring as it was plus the whole chunk, and write afterwards.
        all_keys = mx.concatenate([self.keys, keys], axis=2)
        all_values = mx.concatenate([self.values, values], axis=2)
        self._write_chunk(keys, values)
        self.offset = self.offset + t
        return all_keys, all_values

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """`update` plus its mask: (keys, values, mask [T, S], True where a key is visible)."""
        mask = self.mask_for(keys.shape[2])
        all_keys, all_values = self.update(keys, values)
        return all_keys, all_values, mask

    def _write_chunk(self, keys: mx.array, values: mx.array) -> None:
        # Only the last `context` tokens of a long chunk survive in the ring.
        t = keys.shape[2]
        keep = min(t, self.context)
        positions = self.offset + mx.arange(t - keep, t, dtype=mx.int32)
        slots = mx.remainder(positions, self.context)
        slots = slots.reshape(1, 1, keep, 1)
        self.keys = mx.put_along_axis(self.keys, slots, keys[:, :, -keep:], axis=2)
        self.values = mx.put_along_axis(self.values, slots, values[:, :, -keep:], axis=2)
