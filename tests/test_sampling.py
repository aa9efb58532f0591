"""The sampler draws from the distribution the reference samples from: softmax(logits / temp) over
the top-k logits (spec §4.5), computed here independently with numpy and compared with the
frequencies of many draws; and a row of a batch draws with its own key only."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from ppchat.models.sampling import SamplingParams, sample_rows, sample_token, split_rows

LOGITS = np.array([0.3, 2.0, -1.0, 1.4, 1.7, 0.9, -0.2], dtype=np.float32)


def expected(temp: float, top_k: int) -> np.ndarray:
    keep = np.argsort(-LOGITS)[:top_k]
    p = np.zeros_like(LOGITS, dtype=np.float64)
    z = np.exp(LOGITS[keep] / temp - (LOGITS[keep] / temp).max())
    p[keep] = z / z.sum()
    return p


@pytest.mark.parametrize(("temp", "top_k"), [(1.0, 7), (0.7, 3), (2.0, 4), (0.8, 0)])
def test_draw_frequencies_match_softmax_over_top_k(temp: float, top_k: int) -> None:
    n = 40000
    drawn = np.array(sample_token(mx.array(np.tile(LOGITS, (n, 1))), temp, top_k, key=mx.random.key(7)))
    freq = np.bincount(drawn, minlength=LOGITS.size) / n
    want = expected(temp, top_k if top_k else LOGITS.size)
    # 4 standard errors of a binomial frequency at n = 40000 is at most 0.01.
    np.testing.assert_allclose(freq, want, atol=0.01)
    assert (freq[want == 0] == 0).all()


def test_each_row_draws_with_its_own_key() -> None:
    params = SamplingParams(1.0, 5)
    keys = mx.random.split(mx.random.key(3), 4)
    logits = mx.array(np.tile(LOGITS, (4, 1)))
    together = np.array(sample_rows(params, logits, keys))
    alone = [int(sample_rows(params, logits[i : i + 1], keys[i : i + 1])[0]) for i in range(4)]
    assert together.tolist() == alone
    # Many draws per row: rows with different keys do not draw the same sequence.
    rows = []
    for _ in range(30):
        keys, now = split_rows(keys)
        rows.append(np.array(sample_rows(params, logits, now)))
    rows = np.stack(rows, axis=1)
    assert len({tuple(r) for r in rows.tolist()}) == 4
