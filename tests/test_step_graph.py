"""The shape of one streaming step's graph: which MLX primitives it is made of.

On a GPU at batch 1 a step is bound by how many kernels it launches (BENCHMARKS.md, "Trace"), so the
graph must not pick up avoidable ones: `x[i]` integer indexing (a Gather, i.e. a copy kernel, where a
slice is a free view), the dynamic `slice_update` KV write (two kernels, ~70 µs on CUDA) or a
`keys[:, :, slot, :] = k` write (a scatter plus arange index arrays for the sliced axes). These
tests read the lazy graph of a real single-token step of the 7B layout (thin, with evaluated
weights, so that only the step's own work is in the graph) and count its primitives.
"""

from __future__ import annotations

import io
import re
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest

from ppchat.models.lm import LM, LMConfig


def primitives(*outputs: mx.array) -> Counter:
    """How many nodes of each primitive the graph behind `outputs` has."""
    dot = io.StringIO()
    mx.export_to_dot(dot, *outputs)
    return Counter(re.findall(r'label ="([A-Za-z]+)"', dot.getvalue()))


@pytest.fixture(autouse=True)
def generic_graph():
    """Build the backend-independent graph: on a CUDA machine the fused kernels would replace parts."""
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


def small_7b_like() -> LMConfig:
    """The 7B layout (17 streams, 8+8 depformer steps) with two thin layers, to keep the graph small."""
    c = LMConfig.personaplex_7b()
    return LMConfig(**{**c.__dict__, "dim": 256, "num_heads": 4, "num_layers": 2, "hidden": 512,
                       "depformer_dim": 128, "depformer_num_heads": 2, "depformer_num_layers": 2,
                       "depformer_hidden": 256})


def test_temporal_step_has_one_gather_for_the_embeddings_and_no_dynamic_slice_update() -> None:
    config = small_7b_like()
    lm = LM(config, dtype=mx.bfloat16, depformer_steps=8)
    mx.eval(lm.parameters())
    cache = lm.make_cache()
    tokens = mx.array(np.zeros((1, 1 + config.n_q, 1), dtype=np.int32))
    h, logits = lm.forward_embeddings(lm.embed_codes(tokens), cache)
    counts = primitives(h, logits, *[a for c in cache for a in c.state])

    # The 17 input streams are looked up in one stacked table: a single Gather.
    assert counts["Gather"] == 1, counts
    assert counts["SliceUpdate"] == 0 and counts["DynamicSliceUpdate"] == 0, counts
    # One one-row ScatterAxis per cache write (keys and values of each layer), not a Scatter with
    # arange index arrays. (Arange itself is not counted: on the CPU, RoPE's fallback uses it.)
    assert counts["ScatterAxis"] == 2 * config.num_layers and counts["Scatter"] == 0, counts


def test_depformer_column_gathers_only_its_embeddings() -> None:
    config = small_7b_like()
    lm = LM(config, dtype=mx.bfloat16, depformer_steps=8)
    mx.eval(lm.parameters())
    h = mx.zeros((1, 1, config.dim), dtype=mx.bfloat16)
    steps = 8
    audio, logits = lm.depformer.sample_column(
        h, mx.array([0]), mx.zeros((1, steps), dtype=mx.int32), mx.zeros((1, steps), dtype=mx.bool_),
        lambda x, step: mx.argmax(x, axis=-1).astype(mx.int32), steps,
    )
    counts = primitives(*audio, logits)
    assert counts["Gather"] == steps, counts  # the previous token's embedding, once per step
    layers = config.depformer_num_layers
    # Each step's key and value go into a per-column buffer together, with one select against a
    # constant slot mask: no slice_update (a copy of the buffer and the write), no concatenation.
    # The other selects: per step the embedding's -1 rule, and the forcing of the token of every step
    # but the last (whose forced token is no step's input).
    assert counts["SliceUpdate"] == 0 and counts["Select"] == layers * steps + 2 * steps - 1, counts
    # The one Concatenate is the stacked logits, which only a trace evaluates; the tokens come back
    # unstacked (the caller stacks them in one fused pass).
    assert counts["Concatenate"] == 1, counts
    # Step 0 attends to its own key only (its output is its value): no attention op; the steps'
    # input projections are one mat-vec.
    assert counts["ScaledDotProductAttention"] + counts["Softmax"] == layers * (steps - 1), counts
    matmuls = 1 + steps * (1 + 4 * layers)  # the input projection; per step: head, and per layer 4
    attention = 2 * counts["Softmax"]  # on the CPU, attention falls back to scores, softmax, values
    assert counts["Matmul"] == matmuls + attention, counts
