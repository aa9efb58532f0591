"""`LMGen`: PersonaPlex's streaming generation state machine (spec §5.1-5.2) and prompt phases (§6).

Call `n` writes the supplied tokens of call-frame `n` into the token ring (stream k at column
`n + delay_k`), runs the temporal transformer on column `n-1`, picks text and audio for column `n`
(provided tokens win over sampled ones) and returns call-frame `n-1`. Call 0 runs nothing; calls 0
and 1 return nothing.

Spec §5.6 shortcuts (output-identical): a call whose target column is entirely provided (every prompt
call) skips the depformer and sampling, and with `batch_prefill` its transformer input is queued and
run later as one causal batch (`flush`); live calls may run only the first 8 depformer steps. With
`trace=True` every call that runs the model does the full reference computation (all depformer steps
the model has) and records it in `last_trace`; with `trace=True, batch_prefill=False` that is every
call, as in the reference.

The token ring is tiny host (numpy) state; the model work of a call is array-only over the ring KV
caches, so the only host synchronisation in a live step is reading the sampled tokens.

Fast path: with `compile=True` (the default on a GPU) the model work of a call that samples is two
`mx.compile`d graphs (temporal transformer + text head, then the depformer) whose KV caches and random
key are passed in and returned as explicit state, so nothing is retraced from call to call.
`step_live` goes one step further for the duplex loop: it builds the call lazily from device-resident
user codes (which call n does not read when only agent streams are predicted) so that the caller can
evaluate Mimi encode, this call and Mimi decode together, with one host synchronisation per frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from ppchat.models.lm import LM
from ppchat.models.sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, SamplingParams, sample_with

SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
"""Mimi codes of a silent frame: the agent stream during silence and text-prompt phases."""
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
"""Mimi codes of a 440 Hz sine: the user stream during every prompt phase."""
UNGENERATED = -2
PREFILL_CHUNK = 256


@dataclass(frozen=True)
class StepOutput:
    """One call-frame of the token grid: text, agent cb0..7, user cb0..7."""

    tokens: np.ndarray

    @property
    def text_token(self) -> int:
        return int(self.tokens[0])

    @property
    def agent_codes(self) -> np.ndarray:
        """The agent's Mimi codes [8] for this frame (what gets decoded to speech)."""
        return self.tokens[1:9]

    @property
    def user_codes(self) -> np.ndarray:
        return self.tokens[9:17]


@dataclass(frozen=True)
class StepTrace:
    """What one model call computed (recorded with `trace=True`)."""

    model_input: np.ndarray | None
    """Token column [17] fed to the transformer; None when an embedding was replayed."""
    text_logits: np.ndarray
    """float32 [text_card]."""
    dep_text_in: int
    """Text token fed to depformer step 0 (provided text, else the sampled one)."""
    dep_logits: np.ndarray
    """float32 [steps, card]."""
    dep_sampled: np.ndarray
    """[steps] sampled token of each step, before forcing."""


@dataclass(frozen=True)
class VoiceEmbeddings:
    """A precomputed `.pt` voice prompt (spec §6.3)."""

    embeddings: np.ndarray | mx.array
    """[N_v-1, dim] (or [N_v-1, 1, 1, dim]): input embeddings of calls 1..N_v-1."""
    cache: np.ndarray
    """[17, 4] (or [1, 17, 4]) int: the token ring after call N_v-1."""


@dataclass
class LiveStep:
    """A live call built by `LMGen.step_live` but not yet evaluated.

    `agent_codes` (int32 [per_speaker], lazy) is this call's agent output frame, ready to feed Mimi's
    decoder in the same graph; None when the call returns no frame (calls 0 and 1). Evaluate `arrays`
    together with whatever else the frame computes, then call `result()` exactly once before the
    next call.
    """

    agent_codes: mx.array | None
    arrays: list[mx.array]
    _commit: Callable[[], StepOutput | None] = field(repr=False)

    def result(self) -> StepOutput | None:
        """Read the evaluated tokens into the token ring and return call-frame n-1 (as `step` does)."""
        return self._commit()


class LMGen:
    """Streaming generator over an `LM` for one conversation (batch size 1)."""

    def __init__(
        self,
        lm: LM,
        *,
        text_sampling: SamplingParams = TEXT_DEFAULTS,
        audio_sampling: SamplingParams = AUDIO_DEFAULTS,
        depformer_steps: int | None = None,
        batch_prefill: bool = True,
        prefill_chunk: int = PREFILL_CHUNK,
        trace: bool = False,
        seed: int | None = None,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        sine_tokens: Sequence[int] = SINE_TOKENS,
        text_pad: int | None = None,
        compile: bool | None = None,
    ):
        """`depformer_steps`: steps run per live call (default: all the model has; 8 suffices live).
        `seed`: use an explicit `mx.random.key` stream instead of the global MLX generator.
        `silence_tokens`/`sine_tokens`/`text_pad`: prompt-phase constants (defaults: the real ones).
        `compile`: run sampling calls through `mx.compile`d graphs (default: only on a GPU, where it
        pays; on the CPU backend every fused kernel is first built with the system C++ compiler)."""
        config = lm.config
        self.lm = lm
        self.config = config
        self.text_sampling = text_sampling
        self.audio_sampling = audio_sampling
        self.depformer_steps = lm.depformer.steps if depformer_steps is None else depformer_steps
        if not 0 < self.depformer_steps <= lm.depformer.steps:
            raise ValueError(f"depformer_steps must be in 1..{lm.depformer.steps}, got {depformer_steps}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.trace = trace
        self.batch_prefill = batch_prefill
        self.prefill_chunk = prefill_chunk
        self.per_speaker = config.n_q // 2
        self.silence_tokens = self._codes(silence_tokens, "silence_tokens")
        self.sine_tokens = self._codes(sine_tokens, "sine_tokens")
        self.text_pad = config.text_padding_id if text_pad is None else text_pad
        self._delays = np.array(config.delays)
        self._init_tokens = np.array([config.text_init_token] + [config.audio_init_token] * config.n_q)
        self._key = None if seed is None else mx.random.key(seed)
        self.last_trace: StepTrace | None = None
        self.phase_timing = True
        """Time the temporal transformer and the depformer separately (`last_timings_ms`)."""
        self.last_timings_ms: dict[str, float] = {}
        self.compile = mx.default_device() == mx.gpu if compile is None else compile
        self._compiled: dict[tuple, tuple[Callable, Callable]] = {}
        self._live_open = False
        self.reset()

    # ------------------------------------------------------------------------------------ state

    def reset(self) -> None:
        """Start a new sequence: call counter 0, no provided tokens, fresh KV caches."""
        slots = self.config.max_delay + 3
        self._ring = np.full((self.config.num_codebooks, slots), UNGENERATED, dtype=np.int64)
        self._provided = np.zeros((self.config.num_codebooks, slots), dtype=bool)
        self._offset = 0
        self._cache = self.lm.make_cache(1)
        self._pending: list[np.ndarray | mx.array] = []
        self._live_open = False
        self.last_trace = None

    def reseed(self, seed: int | None) -> None:
        """Draw from an explicit key stream started at `seed` from now on (None: MLX's global generator)."""
        self._key = None if seed is None else mx.random.key(seed)

    def eval_state(self) -> None:
        """Evaluate every lazy state array now.

        MLX cannot evaluate on one thread a graph that was built on another, so whoever
        prepares the generator on one thread and steps it on another calls this in between.
        """
        mx.eval([c.state for c in self._cache], [] if self._key is None else self._key, mx.random.state)

    @property
    def offset(self) -> int:
        """The index of the next call."""
        return self._offset

    @property
    def token_ring(self) -> np.ndarray:
        """A copy of the [17, 4] token ring (column c in slot c % 4)."""
        return self._ring.copy()

    def set_token_ring(self, ring: np.ndarray) -> None:
        """Overwrite the token ring (a `.pt` voice's saved `cache`); provided flags stay as they are."""
        ring = np.asarray(ring).reshape(self._ring.shape)
        self._ring[:] = ring

    # ------------------------------------------------------------------------------------ calls

    def step(
        self,
        user_codes: Sequence[int] | np.ndarray | None = None,
        agent_codes: Sequence[int] | np.ndarray | None = None,
        text_token: int | None = None,
    ) -> StepOutput | None:
        """One call with reference semantics: supplied streams are teacher-forced, the rest sampled.

        Returns call-frame n-1, or None for calls 0 and 1.
        """
        self._refuse_open_live_step()
        self.last_trace = None
        user = None if user_codes is None else self._codes(user_codes, "user_codes")
        agent = None if agent_codes is None else self._codes(agent_codes, "agent_codes")
        if not self._prepare(user, agent, text_token):
            return None
        return self._model_call(None)

    def step_live(self, user_codes: mx.array) -> LiveStep:
        """A live call (nothing but the user stream provided) built lazily from device-resident codes.

        `user_codes` (int [per_speaker], may be unevaluated, e.g. straight from Mimi's encoder) are
        written to the ring only by `LiveStep.result()`: call n reads the user codes of earlier calls
        only, as long as the depformer predicts agent streams alone. Where that does not hold (prompt
        calls not yet past the delays, or more depformer steps than agent streams) the call is made
        synchronously with `step` and returned already resolved.
        """
        self._refuse_open_live_step()
        self.last_trace = None
        if self.trace or self._offset <= self.config.max_delay or self.depformer_steps > self.per_speaker:
            out = self.step(user_codes=np.array(user_codes))
            done = None if out is None else mx.array(out.agent_codes.astype(np.int32))
            return LiveStep(done, [], lambda: out)
        n, slots = self._offset, self._ring.shape[1]
        input_slot, target_slot = (n - 1) % slots, n % slots
        target = self._ring[:, target_slot].copy()
        provided = self._provided[:, target_slot].copy()
        provided[1 + self.per_speaker :] = True  # the user codes, written by `result()`
        self._check_predictable(provided, self.depformer_steps)
        self.flush()
        sampled = self._sample_graph(
            self._ring[:, input_slot], target, provided, self.depformer_steps, sync=self.phase_timing
        )
        columns = (n - self.config.max_delay + self._delays) % slots
        agents = np.arange(1, 1 + self.per_speaker)
        # Agent streams of the largest delay are output from the column sampled right now.
        fresh = (columns[agents] == target_slot) & ~provided[agents]
        known = self._ring[agents, columns[agents]].astype(np.int32)
        agent_codes = mx.where(mx.array(fresh), sampled[1 : 1 + self.per_speaker], mx.array(known))
        user_codes = mx.array(user_codes).reshape(-1)
        self._live_open = True

        def commit() -> StepOutput:
            if not self._live_open or self._offset != n:
                raise RuntimeError("LiveStep.result() must be called once, before the next call")
            tokens = np.array(sampled, dtype=np.int64)
            self._fill_target(target_slot, tokens, provided)
            self._provided[:, input_slot] = False
            for q, token in enumerate(self._codes(np.array(user_codes), "user_codes")):
                self._write(1 + self.per_speaker + q, int(token))
            self._offset += 1
            self._live_open = False
            return StepOutput(self._ring[np.arange(self._ring.shape[0]), columns].copy())

        return LiveStep(agent_codes, [sampled, user_codes, agent_codes, *self.pending_arrays()], commit)

    def step_embeddings(self, embedding: np.ndarray | mx.array) -> StepOutput | None:
        """Replay one stored input embedding [dim] instead of the embedded token column (spec §6.3).

        Like the reference, dummy tokens (audio INIT, text PAD) are written as provided, and a
        first call also lets call 0 pass.
        """
        self._refuse_open_live_step()
        self.last_trace = None
        embedding = mx.array(embedding).reshape(-1)
        if embedding.shape[0] != self.config.dim:
            raise ValueError(f"voice embedding has {embedding.shape[0]} values, the LM dim is {self.config.dim}")
        dummy = np.full(self.per_speaker, self.config.audio_init_token)
        while not self._prepare(dummy, dummy, self.text_pad):
            pass
        return self._model_call(embedding)

    def flush(self) -> None:
        """Run queued prefill columns through the transformer now (batched, in chunks)."""
        if not self._pending:
            return
        parts: list[mx.array] = []
        columns: list[np.ndarray] = []
        for item in self._pending + [None]:
            if isinstance(item, np.ndarray):
                columns.append(item)
                continue
            if columns:
                parts.append(self.lm.embed_codes(mx.array(np.stack(columns, axis=1))[None]))
                columns = []
            if item is not None:
                parts.append(item.reshape(1, 1, -1))
        self._pending = []
        x = mx.concatenate([part.astype(self.lm.dtype) for part in parts], axis=1)
        for start in range(0, x.shape[1], self.prefill_chunk):
            self.lm.prefill(x[:, start : start + self.prefill_chunk], self._cache)
            mx.eval([c.state for c in self._cache])

    # ------------------------------------------------------------------------------------ prompts

    def load_voice_embeddings(self, embeddings: np.ndarray | mx.array, cache: np.ndarray) -> None:
        """Replay a `.pt` voice prompt: one `step_embeddings` per row, then restore its token ring."""
        embeddings = mx.array(embeddings)
        embeddings = embeddings.reshape(embeddings.shape[0], -1) if embeddings.size else embeddings
        for row in range(embeddings.shape[0]):
            self.step_embeddings(embeddings[row])
        self.set_token_ring(cache)

    def run_system_prompts(
        self,
        *,
        voice: np.ndarray | VoiceEmbeddings | None = None,
        text_tokens: Sequence[int] = (),
        silence_frames: int = 6,
    ) -> None:
        """Prompt phases of spec §6.1: voice -> silence -> text -> silence.

        `voice`: agent Mimi codes [8, N_v] (or [1, 8, N_v]) of a voice recording, a `VoiceEmbeddings`,
        or None. Each text token is one call; the user stream is the sine tokens throughout.
        Queued prefill is flushed at the end, so the KV cache is ready for live calls.
        """
        if isinstance(voice, VoiceEmbeddings):
            self.load_voice_embeddings(voice.embeddings, voice.cache)
        elif voice is not None:
            codes = np.asarray(voice)
            codes = codes.reshape(codes.shape[-2], codes.shape[-1]) if codes.ndim == 3 else codes
            if codes.ndim != 2 or codes.shape[0] != self.per_speaker:
                raise ValueError(f"voice codes must be [{self.per_speaker}, frames], got {np.asarray(voice).shape}")
            for frame in range(codes.shape[1]):
                self.step(user_codes=self.sine_tokens, agent_codes=codes[:, frame], text_token=self.text_pad)
        self._silence(silence_frames)
        for token in text_tokens:
            self.step(user_codes=self.sine_tokens, agent_codes=self.silence_tokens, text_token=int(token))
        self._silence(silence_frames)
        self.flush()

    def _silence(self, frames: int) -> None:
        for _ in range(frames):
            self.step(user_codes=self.sine_tokens, agent_codes=self.silence_tokens, text_token=self.text_pad)

    # ------------------------------------------------------------------------------------ internals

    def _codes(self, codes: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.shape[0] != self.per_speaker:
            raise ValueError(f"{name} must hold {self.per_speaker} codes, got {codes.shape[0]}")
        if codes.min() < 0 or codes.max() > self.config.card:
            raise ValueError(f"{name} must be in 0..{self.config.card}, got {codes.tolist()}")
        return codes

    def _write(self, stream: int, token: int) -> None:
        slot = (self._offset + self._delays[stream]) % self._ring.shape[1]
        self._ring[stream, slot] = token
        self._provided[stream, slot] = True

    def _prepare(self, user: np.ndarray | None, agent: np.ndarray | None, text: int | None) -> bool:
        """Write supplied tokens and start-of-sequence INITs; False if this was call 0 (nothing runs)."""
        if user is not None:
            for q, token in enumerate(user):
                self._write(1 + self.per_speaker + q, int(token))
        if agent is not None:
            for q, token in enumerate(agent):
                self._write(1 + q, int(token))
        if text is not None:
            if not 0 <= int(text) <= self.config.text_card:
                raise ValueError(f"text_token must be in 0..{self.config.text_card}, got {text}")
            self._write(0, int(text))
        slots = self._ring.shape[1]
        starting = self._offset <= self._delays
        self._ring[starting, self._offset % slots] = self._init_tokens[starting]
        self._provided[starting, self._offset % slots] = True
        if self._offset == 0:
            # Call 0 runs nothing; the INIT rule above has already overwritten its delay-0 tokens,
            # and call 1 overwrites its delay-1 ones, so everything supplied here is discarded.
            self._offset = 1
            return False
        return True

    def _model_call(self, embedding: mx.array | None) -> StepOutput | None:
        n, slots = self._offset, self._ring.shape[1]
        input_slot, target_slot = (n - 1) % slots, n % slots
        model_input = self._ring[:, input_slot].copy()
        target = self._ring[:, target_slot].copy()
        provided = self._provided[:, target_slot].copy()
        source = embedding if embedding is not None else model_input

        if not provided.all() or (self.trace and not self.batch_prefill):
            self.flush()
            chosen = self._predict(source, target, provided, model_input if embedding is None else None)
            self._fill_target(target_slot, chosen, provided)
        elif self.batch_prefill:
            self._pending.append(source)
        else:
            self._transformer_only(source)
        self._provided[:, input_slot] = False

        self._offset += 1
        if n <= self.config.max_delay:
            return None
        columns = (n - self.config.max_delay + self._delays) % slots
        return StepOutput(self._ring[np.arange(self._ring.shape[0]), columns].copy())

    def _fill_target(self, target_slot: int, chosen: np.ndarray, provided: np.ndarray) -> None:
        """Write sampled tokens where nothing was provided (provided tokens win)."""
        fill = ~provided[: chosen.shape[0]]
        self._ring[: chosen.shape[0], target_slot][fill] = chosen[fill]

    def _refuse_open_live_step(self) -> None:
        if self._live_open:
            raise RuntimeError("the previous LiveStep has not been resolved: call its result() first")

    def _embed_source(self, source: np.ndarray | mx.array) -> mx.array:
        if isinstance(source, np.ndarray):
            return self.lm.embed_codes(mx.array(source)[None, :, None])
        return source.reshape(1, 1, -1)

    def _transformer_only(self, source: np.ndarray | mx.array) -> None:
        self.lm.prefill(self._embed_source(source), self._cache)
        mx.eval([c.state for c in self._cache])

    def _next_key(self) -> mx.array | None:
        if self._key is None:
            return None
        self._key, sub = mx.random.split(self._key)
        return sub

    def _sample_graph(
        self, model_input: np.ndarray, target: np.ndarray, provided: np.ndarray, steps: int, *, sync: bool
    ) -> mx.array:
        """The sampled [1 + steps] tokens (int32) of a token-column call, through the (compiled) graphs.

        KV caches and key are updated. With `sync`, evaluates them; with `phase_timing`, also
        between the two halves (that one extra sync feeds `last_timings_ms` for the latency panel).
        """
        temporal, depformer = self._graphs(steps)
        t0 = time.perf_counter()
        h, text_sampled, text_in, state = temporal(
            self._state_arrays(),
            mx.array(model_input.astype(np.int32)),
            mx.array(target[:1].astype(np.int32)),
            mx.array(provided[:1]),
        )
        self._set_state_arrays(state)
        if self.phase_timing:
            mx.eval(h, text_in, self.pending_arrays())
        t1 = time.perf_counter()
        audio, key = depformer(
            [] if self._key is None else [self._key],
            h,
            text_in,
            mx.array(target[None, 1 : 1 + steps].astype(np.int32)),
            mx.array(provided[None, 1 : 1 + steps]),
        )
        if self._key is not None:
            self._key = key[0]
        sampled = mx.concatenate([text_sampled, audio])
        if sync:
            mx.eval(sampled, self.pending_arrays())
        t2 = time.perf_counter()
        self.last_timings_ms = {"temporal": (t1 - t0) * 1e3, "depformer": (t2 - t1) * 1e3} if self.phase_timing else {}
        return sampled

    def pending_arrays(self) -> list[mx.array]:
        """Every state array a call updates (KV caches, random key): evaluate them with the call's output
        so that no lazy graph is carried from one call into the next."""
        key = list(mx.random.state) if self._key is None else [self._key]
        return [a for c in self._cache for a in c.state] + key

    def _state_arrays(self) -> list[mx.array]:
        """The explicit state of the graph functions: KV caches, then the explicit key if seeded."""
        return [a for c in self._cache for a in c.state] + ([] if self._key is None else [self._key])

    def _set_state_arrays(self, arrays: list[mx.array]) -> None:
        per_cache = len(self._cache[0].state)
        for index, cache in enumerate(self._cache):
            cache.state = list(arrays[per_cache * index : per_cache * (index + 1)])
        if self._key is not None:
            self._key = arrays[-1]

    def _graphs(self, steps: int) -> tuple[Callable, Callable]:
        """The temporal and depformer graph functions for `steps`, compiled once per sampling setting."""

        def depformer(*args: object) -> tuple[mx.array, list[mx.array]]:
            return self._depformer_graph(steps, *args)

        if not self.compile:
            return self._temporal_graph, depformer
        signature = (steps, self.text_sampling, self.audio_sampling, self._key is None)
        if signature not in self._compiled:
            # An unseeded draw uses MLX's global generator: capture its state so it advances as eagerly.
            capture = {"inputs": [mx.random.state], "outputs": [mx.random.state]}
            self._compiled = {signature: (mx.compile(self._temporal_graph, **capture), mx.compile(depformer, **capture))}
        return self._compiled[signature]

    def _temporal_graph(
        self, state: list[mx.array], tokens: mx.array, text_given: mx.array, text_mask: mx.array
    ) -> tuple[mx.array, mx.array, mx.array, list[mx.array]]:
        """Pure in its arguments and the weights: (h, text sampled [1], depformer text input [1], new state)."""
        self._set_state_arrays(state)
        h, text_logits = self.lm.forward_embeddings(self.lm.embed_codes(tokens[None, :, None]), self._cache)
        text_sampled = sample_with(self.text_sampling, text_logits[:, 0], self._next_key())
        text_in = mx.where(text_mask, text_given, text_sampled)
        return h, text_sampled, text_in, self._state_arrays()

    def _depformer_graph(
        self, steps: int, key: list[mx.array], h: mx.array, text_in: mx.array, forced: mx.array, forced_mask: mx.array
    ) -> tuple[mx.array, list[mx.array]]:
        """Pure in its arguments and the weights: (audio tokens [steps] before forcing, [new key] or [])."""
        if key:
            self._key = key[0]
        draw = lambda logits: sample_with(self.audio_sampling, logits, self._next_key())  # noqa: E731
        audio, _ = self.lm.depformer.sample_column(h, text_in, forced, forced_mask, draw, steps)
        return audio[0], [] if self._key is None else [self._key]

    def _check_predictable(self, provided: np.ndarray, steps: int) -> None:
        unforced = np.flatnonzero(~provided[1 + steps :])
        if unforced.size:
            raise ValueError(
                f"stream(s) {(unforced + 1 + steps).tolist()} are neither provided nor predicted: with "
                f"{steps} depformer steps, user codes must be given at every call"
            )

    def _predict(
        self, source: np.ndarray | mx.array, target: np.ndarray, provided: np.ndarray, model_input: np.ndarray | None
    ) -> np.ndarray:
        """Transformer on the input column, text sample, depformer; returns the sampled
        [1 + steps] tokens (text, then streams 1..steps) before forcing."""
        steps = self.depformer_steps if not self.trace else self.lm.depformer.steps
        self._check_predictable(provided, steps)
        if not self.trace and isinstance(source, np.ndarray):
            return np.array(self._sample_graph(source, target, provided, steps, sync=True), dtype=np.int64)
        t0 = time.perf_counter()
        h, text_logits = self.lm.forward_embeddings(self._embed_source(source), self._cache)
        text_logits = text_logits[:, 0]
        text_sampled = sample_with(self.text_sampling, text_logits, self._next_key())
        if self.phase_timing:
            # One extra sync splits the step into its two halves for the latency panel.
            mx.eval(h, text_sampled)
        t1 = time.perf_counter()
        text_in = mx.array([int(target[0])], dtype=mx.int32) if provided[0] else text_sampled
        audio_sampled, dep_logits = self.lm.depformer.sample_column(
            h,
            text_in,
            mx.array(target[1 : 1 + steps], dtype=mx.int32)[None],
            mx.array(provided[1 : 1 + steps])[None],
            lambda logits: sample_with(self.audio_sampling, logits, self._next_key()),
            steps,
        )
        sampled = mx.concatenate([text_sampled, audio_sampled[0]])
        if self.trace:
            mx.eval(sampled, text_logits, dep_logits, [c.state for c in self._cache])
            tokens = np.array(sampled, dtype=np.int64)
            self.last_trace = StepTrace(
                model_input=model_input,
                text_logits=np.array(text_logits[0]),
                dep_text_in=int(target[0]) if provided[0] else int(tokens[0]),
                dep_logits=np.array(dep_logits[0]),
                dep_sampled=tokens[1:],
            )
            return tokens
        mx.eval(sampled, [c.state for c in self._cache])
        tokens = np.array(sampled, dtype=np.int64)
        t2 = time.perf_counter()
        self.last_timings_ms = {"temporal": (t1 - t0) * 1e3, "depformer": (t2 - t1) * 1e3}
        return tokens
