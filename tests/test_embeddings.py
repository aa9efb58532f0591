"""Token -1 embeds to an exact zero row (the reference `ScaledEmbedding`), in the depformer's lookups
(`embed_tokens`) and the LM's stacked input table (`LM.embed_codes`), float and quantised: the
lookup wraps the -1 to a real row and must replace it by zeros, whatever that row holds."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from ppchat.models.layers import embed_tokens
from ppchat.models.lm import LM, LMConfig


@pytest.fixture(autouse=True)
def on_cpu():
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


@pytest.mark.parametrize("quantized", [False, True])
def test_minus_one_gives_a_zero_row_and_other_tokens_their_rows(quantized: bool) -> None:
    mx.random.seed(0)
    table = nn.Embedding(10, 64)
    if quantized:
        nn.quantize(table, 32, 4)
    tokens = mx.array([[3, -1, 0, 9, -1]])
    out = np.array(embed_tokens(table, tokens))
    rows = np.array(table(mx.array([[3, 0, 0, 9, 0]])))
    assert np.abs(np.array(table(mx.array([9])))).max() > 0  # the row a -1 wraps to is not zero
    np.testing.assert_array_equal(out[0, [0, 2, 3]], rows[0, [0, 2, 3]])
    assert (out[0, [1, 4]] == 0).all()


def small_lm() -> LM:
    c = LMConfig.personaplex_7b()
    config = LMConfig(**{**c.__dict__, "dim": 64, "num_heads": 2, "num_layers": 1, "hidden": 128,
                         "depformer_dim": 32, "depformer_num_heads": 2, "depformer_num_layers": 1,
                         "depformer_hidden": 64, "text_card": 50, "card": 20})
    lm = LM(config, dtype=mx.bfloat16, depformer_steps=2)
    mx.eval(lm.parameters())
    return lm


@pytest.mark.parametrize("stream", [0, 1, 16])
def test_input_embedding_of_a_column_skips_its_minus_one_streams(stream: int) -> None:
    lm = small_lm()
    c = lm.config
    tokens = np.full((1, 1 + c.n_q, 1), -1, dtype=np.int32)
    assert not np.array(lm.embed_codes(mx.array(tokens)).astype(mx.float32)).any()
    tokens[0, stream, 0] = 7
    start = 0 if stream == 0 else c.text_card + 1 + (stream - 1) * (c.card + 1)
    row = np.array(lm.input_emb.weight[start + 7].astype(mx.float32))
    np.testing.assert_array_equal(np.array(lm.embed_codes(mx.array(tokens)).astype(mx.float32))[0, 0], row)
