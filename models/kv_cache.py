"""Preallocated ring KV cache for the LM's temporal transformer.

Like the reference `RingKVCache`, it keeps exactly `context` slots. Positions are absolute (since the
last reset) and never wrapped: they also drive RoPE.

Visibility: query position `p_q` sees key position `p_k` iff that key was written and
`0 <= p_q - p_k < context - 1`. Spec §4.2 says `< context`, but the reference's position bookkeeping
(`RingKVCache.complete`, its `delta <= 0` branch) gives the oldest slot of a full ring the position
`end_offset`, i.e. a future one, so that key is always masked: once the ring has filled, each query
sees `context - 1` keys. The lm_tiny fixture (context 40, 61 calls) confirms this: with
`< context` the logits diverge from call 40 on.

All state lives in `mx.array`s (including the position counter), so a live step can be wrapped in
`mx.compile` with `cache.state` as captured state and no host synchronisation.
"""

from __future__ import annotations

import mlx.core as mx


class RingKVCache:
    """`context` slots of keys/values per layer; slot `p % context` holds absolute position `p`."""

    def __init__(self, batch_size: int, num_heads: int, head_dim: int, context: int, dtype: mx.Dtype):
        self.context = context
        self.keys = mx.zeros((batch_size, num_heads, context, head_dim), dtype=dtype)
        self.values = mx.zeros((batch_size, num_heads, context, head_dim), dtype=dtype)
        # Absolute position stored in each slot, -1 while the slot has never been written.
        self.positions = mx.full((context,), -1, dtype=mx.int32)
        # Absolute position of the next token to be written (= number of tokens seen since reset).
        self.offset = mx.array(0, dtype=mx.int32)

    @property
    def state(self) -> list[mx.array]:
        """The arrays that change per update (for `mx.eval` / `mx.compile` state capture)."""
        return [self.keys, self.values, self.positions, self.offset]

    @state.setter
    def state(self, arrays: list[mx.array]) -> None:
        self.keys, self.values, self.positions, self.offset = arrays

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Append T new keys/values ([B, H, T, hd], positions `offset..offset+T-1`).

        Returns (keys, values, mask) to attend over: mask [T, S] is True where a key is visible.
        """
        t = keys.shape[2]
        query_pos = self.offset + mx.arange(t, dtype=mx.int32)
        if t == 1:
            # Writing first is exact for a single token: the key it overwrites is `context` steps
            # old, which the mask hides anyway.
            self._write(keys, values, query_pos)
            all_keys, all_values, key_pos = self.keys, self.values, self.positions
        else:
            # A chunk may overwrite keys that its own earlier queries still need, so attend over
            # the ring as it was plus the whole chunk, and write afterwards.
            all_keys = mx.concatenate([self.keys, keys], axis=2)
            all_values = mx.concatenate([self.values, values], axis=2)
            key_pos = mx.concatenate([self.positions, query_pos])
            self._write(keys, values, query_pos)
        delta = query_pos[:, None] - key_pos[None, :]
        mask = (key_pos[None, :] >= 0) & (delta >= 0) & (delta < self.context - 1)
        self.offset = self.offset + t
        return all_keys, all_values, mask

    def _write(self, keys: mx.array, values: mx.array, positions: mx.array) -> None:
        # Only the last `context` tokens of a long chunk survive in the ring.
        keep = min(keys.shape[2], self.context)
        keys, values, positions = keys[:, :, -keep:], values[:, :, -keep:], positions[-keep:]
        slots = positions % self.context
        self.keys[:, :, slots, :] = keys
        self.values[:, :, slots, :] = values
        self.positions[slots] = positions
