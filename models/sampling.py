"""Token sampling as in the reference `sample_token` (spec §4.5).

Logits are used in float32. With `temp > 0` the draw is categorical over the `top_k` largest logits
scaled by `1/temp` (the reference's softmax + top-k + exponential race is the same distribution; here
it is a Gumbel-max draw);
with `temp <= 0` it is the argmax. PAD/EPAD are ordinary classes: nothing is masked.
"""

from __future__ import annotations

import mlx.core as mx

from ppchat.sampling import SamplingParams


def sample_token(logits: mx.array, temp: float, top_k: int, key: mx.array | None = None) -> mx.array:
    """Draw one token per row of `logits` [..., vocab] -> int32 [...], every row from the one `key`.

    `key` is an `mx.random.key`; without one the global MLX generator (`mx.random.seed`) is used.
    """
    return _draw(logits, temp, top_k, lambda shape: mx.random.gumbel(shape, key=key))


def sample_rows(params: SamplingParams, logits: mx.array, keys: mx.array | None = None) -> mx.array:
    """One token per row of `logits` [B, vocab] -> int32 [B], row b drawn with its own key `keys[b]`
    ([B, 2], `mx.random.key`s; None: the global generator). A row's draw depends only on its logits
    and its key, so a conversation samples the same tokens alone or in a batch with others."""
    if keys is None:
        return sample_token(logits, params.temp, params.top_k)
    return _draw(logits, params.temp, params.top_k,
                 lambda shape: mx.vmap(lambda key: mx.random.gumbel(shape[1:], key=key))(keys))


def split_rows(keys: mx.array) -> tuple[mx.array, mx.array]:
    """`mx.random.split` of each row's key [B, 2]: (the rows' next keys, the keys to draw with now)."""
    pairs = mx.vmap(mx.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def _draw(logits: mx.array, temp: float, top_k: int, gumbel) -> mx.array:
    # Gumbel-max: argmax(logits / temp + Gumbel noise) is a categorical draw from softmax(logits / temp);
    # restricted to the logits at or above the k-th largest it is the top-k draw. One partition finds
    # that threshold: no index arrays to gather from, four operations per draw (partition, random
    # bits, one fused elementwise pass, argmax). A tie at the threshold admits every tied logit.
    logits = logits.astype(mx.float32)
    if temp <= 0:
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    vocab = logits.shape[-1]
    scores = logits / temp + gumbel(logits.shape)
    if 0 < top_k < vocab:
        cut = vocab - top_k
        threshold = mx.partition(logits, kth=cut, axis=-1)[..., cut : cut + 1]
        scores = mx.where(logits >= threshold, scores, -mx.inf)
    return mx.argmax(scores, axis=-1).astype(mx.int32)
