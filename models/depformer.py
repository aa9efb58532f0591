"""The depformer: a small transformer run once per column, one step per audio stream (spec §2.4, §4.3).

Step `s` predicts stream `s+1` (agent cb0..7, then user cb0..7). Every step has its own attention
projections, FFN, input projection (`depformer_in.s`) and output head (`linears.s`); the norms are
shared. There is no positional encoding, no final norm, and the KV cache starts empty every column.
The reference's per-column KV ring has `dep_q` slots and, like the LM's (see `kv_cache.py`), hides
the oldest slot once full: step 15 of a 16-step column does not attend to step 0. The lm_tiny
fixture's step-15 logits confirm it.
A model may be built with fewer steps than the checkpoint holds (`steps`), e.g. the 8 agent steps
that live inference needs (spec §5.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ppchat.models.layers import GatedFFN, RMSNorm, embed_tokens, merge_heads, pick, project


@dataclass
class DepformerKV:
    """Keys and values of the steps already run in the current column: per layer, one
    [2, B, H, steps, D] buffer (keys, then values) holding step `s`'s at index `s` (made by the first
    step). A step writes its key and value, side by side in its fused projection's output, with one
    select against a constant slot mask (`slots[s]`, [steps, 1]): one fused elementwise kernel. A
    `slice_update` was two on a GPU whenever the buffer could not be donated (a copy of the whole
    buffer, then the write), and growing by concatenation one copy per piece."""

    kv: list[mx.array | None] = field(default_factory=list)
    steps: int = 0
    slots: list[mx.array] = field(default_factory=list)

    def write(self, layer: int, step: int, new: mx.array) -> mx.array:
        """The layer's buffer with `new` ([2, B, H, 1, D]) at `step`; step 0 starts it (zeros elsewhere)."""
        old = self.kv[layer] if step else mx.zeros((), new.dtype)
        self.kv[layer] = mx.where(self.slots[step], new, old)
        return self.kv[layer]


class StepwiseAttention(nn.Module):
    """Causal attention with separate `in_proj`/`out_proj` weights for each depformer step."""

    def __init__(self, dim: int, num_heads: int, steps: int, kv_capacity: int):
        super().__init__()
        self.num_heads = num_heads
        self.window = kv_capacity - 1
        self.scale = 1.0 / math.sqrt(dim // num_heads)
        self.in_proj = [nn.Linear(dim, 3 * dim, bias=False) for _ in range(steps)]
        self.out_proj = [nn.Linear(dim, dim, bias=False) for _ in range(steps)]

    def __call__(self, x: mx.array, step: int, kv: DepformerKV, layer: int) -> mx.array:
        b, t, _ = x.shape
        qkv = project(self.in_proj[step], x).reshape(b, t, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)
        if step == 0:
            # The column's first query sees its own key only: softmax weight exactly 1, out = v.
            out = pick(qkv, 2)
            if kv.steps > 1:
                kv.write(layer, 0, qkv[1:])
            return project(self.out_proj[step], merge_heads(out))
        buffer = kv.write(layer, step, qkv[1:])
        # One query after the earlier steps of this column: every key in the window is visible.
        first = max(0, step + 1 - self.window)
        window = buffer[:, :, :, first : step + 1]
        out = mx.fast.scaled_dot_product_attention(pick(qkv, 0), pick(window, 0), pick(window, 1), scale=self.scale)
        return project(self.out_proj[step], merge_heads(out))


class DepformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, steps: int, kv_capacity: int, norm_eps: float):
        super().__init__()
        self.norm1 = RMSNorm(dim, norm_eps)
        self.self_attn = StepwiseAttention(dim, num_heads, steps, kv_capacity)
        self.norm2 = RMSNorm(dim, norm_eps)
        self.gating = [GatedFFN(dim, hidden) for _ in range(steps)]

    def __call__(self, x: mx.array, step: int, kv: DepformerKV, layer: int) -> mx.array:
        x = x + self.self_attn(self.norm1(x), step, kv, layer)
        return x + self.gating[step](self.norm2(x))


class Depformer(nn.Module):
    """Per-column depth transformer with its token embeddings, input projections and heads.

    `steps` is how many steps are built; `kv_capacity` is the reference's per-column KV ring size
    (its `dep_q`), which decides what the last step can see.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_heads: int,
        num_layers: int,
        hidden: int,
        steps: int,
        kv_capacity: int,
        card: int,
        text_card: int,
        norm_eps: float,
    ):
        super().__init__()
        self.steps = steps
        self.dim = dim
        # The steps' input projections (`depformer_in.s`) as one [steps * dim, in_dim] matrix: every
        # one reads the same h, so a column projects it once (one mat-vec instead of `steps`).
        self.input_proj = nn.Linear(in_dim, steps * dim, bias=False)
        self.text_emb = nn.Embedding(text_card + 1, dim)
        self.audio_embs = [nn.Embedding(card + 1, dim) for _ in range(steps - 1)]
        self.layers = [DepformerLayer(dim, num_heads, hidden, steps, kv_capacity, norm_eps) for _ in range(num_layers)]
        self.heads = [nn.Linear(dim, card, bias=False) for _ in range(steps)]

    def make_cache(self, steps: int | None = None) -> DepformerKV:
        """An empty per-column cache for `steps` steps (the reference restarts depformer streaming
        every column)."""
        steps = self.steps if steps is None else steps
        # Constants (made from numpy, so a compiled column captures them instead of computing them).
        slots = [mx.array(np.arange(steps)[:, None] == step) for step in range(steps)]
        return DepformerKV([None] * len(self.layers), steps, slots)

    def step_logits(self, step: int, projected: mx.array, prev_token: mx.array, kv: DepformerKV) -> mx.array:
        """Logits [B, card] of step `step`, given the column's input projection
        (`input_proj(h)` of the out_norm-ed main output h, [B, 1, steps * dim]) and the previous
        stream's chosen token [B] (the text token for step 0)."""
        table = self.text_emb if step == 0 else self.audio_embs[step - 1]
        x = projected[..., step * self.dim : (step + 1) * self.dim] + embed_tokens(table, prev_token)[:, None, :]
        for index, layer in enumerate(self.layers):
            x = layer(x, step, kv, index)
        return project(self.heads[step], x)[:, 0, :]

    def sample_column(
        self,
        h: mx.array,
        text_token: mx.array,
        forced_tokens: mx.array,
        forced_mask: mx.array,
        sample: Callable[[mx.array, int], mx.array],
        num_steps: int | None = None,
    ) -> tuple[list[mx.array], mx.array]:
        """Run steps 0..num_steps-1 for one column (spec §4.3).

        forced_tokens/forced_mask [B, >=num_steps]: stream s+1's provided token and whether it is
        provided; a provided token replaces the sampled one as the next step's input.
        `sample(logits, step)` maps step `step`'s logits [B, card] (in the model's dtype) to tokens [B].
        Returns (each step's sampled token, int32 [B], before forcing; float32 logits [B, num_steps, card]).
        The tokens are left unstacked so that the caller can stack them with others in one pass
        (`layers.stack_columns`).
        """
        num_steps = self.steps if num_steps is None else num_steps
        if not 0 < num_steps <= self.steps:
            raise ValueError(f"num_steps must be in 1..{self.steps}, got {num_steps}")
        kv = self.make_cache(num_steps)
        projected = project(self.input_proj, h)
        prev = text_token
        sampled, logits = [], []
        for step in range(num_steps):
            step_logits = self.step_logits(step, projected, prev, kv)
            token = sample(step_logits, step)
            sampled.append(token)
            logits.append(step_logits)
            prev = mx.where(forced_mask[:, step], forced_tokens[:, step], token)
        # Only a trace evaluates the stacked logits. Cast after the stack: a cast of each step's
        # logits would be the same node as the sampler's (merged by `mx.compile`), which then could
        # not fuse into the sampler's elementwise pass and would cost a kernel per step.
        return sampled, mx.stack(logits, axis=1).astype(mx.float32)
