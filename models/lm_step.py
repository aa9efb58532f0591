"""`LMStep`: the model work of one sampling call over B rows — the one path every call takes.

Temporal transformer on the input column → text head → text sample → depformer steps with their
samples, as two pure graph functions (KV caches and random keys in, new ones out), `mx.compile`d when
asked so that a frame replays the graphs instead of retracing Python. `LMGen` (one conversation) and
`BatchLMGen` (many, one per row) both run it; a row's draws depend only on its own logits and key,
which is why a conversation samples the same tokens alone or in a batch.

Random keys are per row ([B, 2], split per draw as `mx.random.split` does for one key), or None to
draw from MLX's global generator (its state is then captured by the compiled graphs, so it advances
as an eager run would).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from ppchat.models.kv_cache import RingKVCache
from ppchat.models.layers import stack_columns
from ppchat.models.lm import LM
from ppchat.models.sampling import SamplingParams, draw, gumbel_rows, sample_rows, split_rows


@dataclass(frozen=True)
class StepArrays:
    """A call's outputs, lazy until evaluated: `sampled` int32 [B, 1 + steps] (text, then audio
    streams 1..steps, before forcing); the text input the depformer got [B]; float32 logits."""

    sampled: mx.array
    text_in: mx.array
    text_logits: mx.array
    dep_logits: mx.array


def _delegated(name: str, doc: str) -> property:
    def get(self):
        return getattr(self._step, name)

    def set(self, value) -> None:
        setattr(self._step, name, value)

    return property(get, set, doc=doc)


class RunsLMStep:
    """The settings of the `LMStep` (`self._step`) that a generator runs its calls through."""

    _step: LMStep
    compile = _delegated("compile", "Run calls through `mx.compile`d graphs.")
    text_sampling = _delegated("text_sampling", "The text head's temperature and top-k.")
    audio_sampling = _delegated("audio_sampling", "The audio heads' temperature and top-k.")


class LMStep:
    """Runs calls on an `LM` with fixed sampling settings."""

    def __init__(self, lm: LM, text_sampling: SamplingParams, audio_sampling: SamplingParams, compile: bool):
        self.lm = lm
        self.text_sampling = text_sampling
        self.audio_sampling = audio_sampling
        self.compile = compile
        self._compiled: dict[tuple, tuple[Callable, Callable]] = {}
        # The caches of the call being traced or run: the graph functions take and return their state
        # arrays and bind them to these objects meanwhile.
        self._cache: list[RingKVCache] = []
        self.last_timings_ms: dict[str, float] = {}

    def run(
        self,
        cache: list[RingKVCache],
        keys: mx.array | None,
        source: mx.array,
        text_given: mx.array,
        text_mask: mx.array,
        forced: mx.array,
        forced_mask: mx.array,
        *,
        phase_timing: bool = False,
    ) -> tuple[StepArrays, mx.array | None]:
        """One call for B rows: `source` int32 token columns [B, streams] or input embeddings [B, dim];
        `text_given`/`text_mask` [B] the provided text token; `forced`/`forced_mask` [B, steps] the
        provided tokens of streams 1..steps (steps = how many depformer steps run). Updates `cache`'s
        state; returns the call's arrays and the rows' next keys. With `phase_timing`, synchronises
        between the transformer and the depformer and records both in `last_timings_ms`."""
        temporal, depformer = self._graphs(forced.shape[1], keys is None, source.dtype == mx.int32)
        t0 = time.perf_counter()
        self._cache = cache
        state = [a for c in cache for a in c.state] + ([] if keys is None else [keys])
        h, text_logits, text_sampled, text_in, state = temporal(state, source, text_given, text_mask)
        if keys is not None:
            state, keys = state[:-1], state[-1]
        per_cache = len(cache[0].state)
        for index, c in enumerate(cache):
            c.state = list(state[per_cache * index : per_cache * (index + 1)])
        if phase_timing:
            mx.eval(h, text_sampled, text_in, state, [] if keys is None else keys, mx.random.state)
        t1 = time.perf_counter()
        sampled, dep_logits, key_out = depformer([] if keys is None else [keys], h, text_sampled, text_in, forced,
                                                 forced_mask)
        keys = key_out[0] if key_out else None
        if phase_timing:
            mx.eval(sampled, [] if keys is None else keys, mx.random.state)
            self.last_timings_ms = {"temporal": (t1 - t0) * 1e3, "depformer": (time.perf_counter() - t1) * 1e3}
        return StepArrays(sampled, text_in, text_logits, dep_logits), keys

    # ------------------------------------------------------------------------------- the graphs

    def _graphs(self, steps: int, global_keys: bool, tokens: bool) -> tuple[Callable, Callable]:
        def temporal(state, source, text_given, text_mask):
            return self._temporal(state, source, text_given, text_mask, global_keys)

        def depformer(keys, h, text_sampled, text_in, forced, forced_mask):
            return self._depformer(steps, keys, h, text_sampled, text_in, forced, forced_mask)

        if not self.compile:
            return temporal, depformer
        # The sampling settings are constants of a traced graph: new settings, new graphs (and the
        # old settings' dropped, so that changing them often does not pile graphs up).
        settings = (self.text_sampling, self.audio_sampling)
        signature = (steps, global_keys, tokens, *settings)
        if signature not in self._compiled:
            self._compiled = {k: v for k, v in self._compiled.items() if k[3:] == settings}
            # An unseeded draw uses MLX's global generator: capture its state so it advances as eagerly.
            capture = {"inputs": [mx.random.state], "outputs": [mx.random.state]} if global_keys else {}
            self._compiled[signature] = (mx.compile(temporal, **capture), mx.compile(depformer, **capture))
        return self._compiled[signature]

    def _temporal(self, state: list[mx.array], source: mx.array, text_given: mx.array, text_mask: mx.array,
                  global_keys: bool):
        """Pure in its arguments and the weights: (h, text logits, text sampled, depformer text input,
        new state)."""
        lm = self.lm
        keys = None if global_keys else state[-1]
        arrays = state if global_keys else state[:-1]
        cache = self._cache
        per_cache = len(cache[0].state)
        for index, c in enumerate(cache):
            c.state = list(arrays[per_cache * index : per_cache * (index + 1)])
        x = lm.embed_codes(source[:, :, None]) if source.dtype == mx.int32 else source[:, None, :]
        h = lm.hidden(x, cache)
        raw = lm.text_head(h)[:, 0]
        text_logits = raw.astype(mx.float32)  # an output for traces; the draw takes the raw logits
        keys, now = (None, None) if keys is None else split_rows(keys)
        text_sampled = sample_rows(self.text_sampling, raw, now)
        text_in = mx.where(text_mask, text_given, text_sampled)
        new_state = [a for c in cache for a in c.state] + ([] if keys is None else [keys])
        return h, text_logits, text_sampled, text_in, new_state

    def _depformer(self, steps: int, keys: list[mx.array], h: mx.array, text_sampled: mx.array, text_in: mx.array,
                   forced: mx.array, forced_mask: mx.array):
        """Pure in its arguments and the weights: (sampled [B, 1 + steps]: the text token, then the
        audio tokens before forcing; logits; [new keys] or [])."""
        rows = list(keys)
        params = self.audio_sampling
        noise = None
        if not params.greedy:
            # The column's Gumbel noise in one draw (each row from its own key): one random-bits
            # kernel for the column instead of a key split and a draw per step.
            shape = (h.shape[0], steps, self.lm.config.card)
            if rows:
                rows[0], now = split_rows(rows[0])
                noise = gumbel_rows(now, shape[1:])
            else:
                noise = mx.random.gumbel(shape)

        def sample(logits: mx.array, step: int) -> mx.array:
            return draw(logits, params.temp, params.top_k, None if noise is None else noise[:, step])

        audio, logits = self.lm.depformer.sample_column(h, text_in, forced, forced_mask, sample, steps)
        return stack_columns([text_sampled, *audio]), logits, rows
