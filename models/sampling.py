"""Token sampling as in the reference `sample_token` (spec §4.5).

With `temp > 0` the draw is categorical over the `top_k` largest logits scaled by `1/temp` (the
reference's softmax + top-k + exponential race is the same distribution; here it is a Gumbel-max
draw); with `temp <= 0` it is the argmax. PAD/EPAD are ordinary classes: nothing is masked.
Logits may come in the model's dtype (bf16): the top-k threshold and the argmax are taken on them
as they are (bf16 -> float32 is exact and keeps the order), the scores are formed in float32.
"""

from __future__ import annotations

import mlx.core as mx

from ppchat.sampling import SamplingParams


def sample_token(logits: mx.array, temp: float, top_k: int, key: mx.array | None = None) -> mx.array:
    """Draw one token per row of `logits` [..., vocab] -> int32 [...], every row from the one `key`.

    `key` is an `mx.random.key`; without one the global MLX generator (`mx.random.seed`) is used.
    """
    noise = None if temp <= 0 else mx.random.gumbel(logits.shape, key=key)
    return draw(logits, temp, top_k, noise)


def sample_rows(params: SamplingParams, logits: mx.array, keys: mx.array | None = None) -> mx.array:
    """One token per row of `logits` [B, vocab] -> int32 [B], row b drawn with its own key `keys[b]`
    ([B, 2], `mx.random.key`s; None: the global generator). A row's draw depends only on its logits
    and its key, so a conversation samples the same tokens alone or in a batch with others."""
    if keys is None:
        return sample_token(logits, params.temp, params.top_k)
    return draw(logits, params.temp, params.top_k, gumbel_rows(keys, logits.shape[1:]))


def gumbel_rows(keys: mx.array, shape: tuple[int, ...]) -> mx.array:
    """Standard Gumbel noise [B, *shape], row b from its own key `keys[b]` alone."""
    return mx.vmap(lambda key: mx.random.gumbel(shape, key=key))(keys)


def split_rows(keys: mx.array) -> tuple[mx.array, mx.array]:
    """`mx.random.split` of each row's key [B, 2]: (the rows' next keys, the keys to draw with now)."""
    pairs = mx.vmap(mx.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def draw(logits: mx.array, temp: float, top_k: int, noise: mx.array | None) -> mx.array:
    """The draw of `sample_token` with its Gumbel noise given (same shape as `logits`; unused, and
    may be None, when `temp <= 0`). Noise drawn ahead for several draws at once (a depformer column's
    eight) costs one random-bits kernel instead of one (plus a key split) per draw."""
    # Gumbel-max: argmax(logits / temp + Gumbel noise) is a categorical draw from softmax(logits / temp);
    # restricted to the logits at or above the k-th largest it is the top-k draw. One partition finds
    # that threshold: no index arrays to gather from; the cast, scaling, noise and cut are one fused
    # elementwise pass, then the argmax. A tie at the threshold admits every tied logit.
    if temp <= 0:
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    vocab = logits.shape[-1]
    scores = logits.astype(mx.float32) / temp + noise
    if 0 < top_k < vocab:
        cut = vocab - top_k
        threshold = mx.partition(logits, kth=cut, axis=-1)[..., cut : cut + 1]
        scores = mx.where(logits >= threshold, scores, -mx.inf)
    return mx.argmax(scores, axis=-1).astype(mx.int32)
