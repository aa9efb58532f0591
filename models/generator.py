"""`LMGen`: PersonaPlex's streaming generation state machine (spec §5.1-5.2) and prompt phases (§6).

Call `n` writes the supplied tokens of call-frame `n` into the token ring (stream k at column
`n + delay_k`), runs the temporal transformer on column `n-1`, picks text and audio for column `n`
(provided tokens win over sampled ones) and returns call-frame `n-1`. Call 0 runs nothing; calls 0
and 1 return nothing.

Spec §5.6 shortcuts (output-identical): a call whose target column is entirely provided (every prompt
call) skips the depformer and sampling, and with `batch_prefill` its transformer input is queued and
run later as one causal batch (`flush`); live calls may run only the first 8 depformer steps.
`TracingLMGen` (`tracing.py`) is the parity tests' generator: the full reference computation at every
call that runs the model, recorded.

The token ring (`TokenRing`) is tiny host (numpy) state; the model work of a call that samples is
`LMStep.run`, array-only over the ring KV caches (two `mx.compile`d graphs with `compile=True`, the
default on a GPU), so the only host synchronisation in a live step is reading the sampled tokens.
`step_live` goes one step further for the duplex loop: it builds the call lazily from device-resident
user codes (which call n does not read when only agent streams are predicted) so that the caller can
evaluate Mimi encode, this call and Mimi decode together, with one host synchronisation per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import mlx.core as mx
import numpy as np

from ppchat.constants import SILENCE_TOKENS, SINE_TOKENS
from ppchat.models.kv_cache import RingKVCache
from ppchat.models.lm import LM
from ppchat.models.lm_step import LMStep, RunsLMStep, StepArrays
from ppchat.models.token_ring import CallColumns, TokenRing
from ppchat.sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, SamplingParams

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


@dataclass(frozen=True)
class ConversationState:
    """What a prepared conversation is, for moving it into a batch row (`BatchLMGen.join`): its one-row
    KV caches, its random key [1, 2] (None: the global generator) and its token ring."""

    cache: list[RingKVCache]
    keys: mx.array | None
    ring: TokenRing


class LMGen(RunsLMStep):
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
        seed: int | None = None,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        sine_tokens: Sequence[int] = SINE_TOKENS,
        text_pad: int | None = None,
        compile: bool | None = None,
        kv_bits: int | None = None,
        phase_timing: bool = True,
    ):
        """`depformer_steps`: steps run per live call (default: all the model has; 8 suffices live).
        `seed`: use an explicit `mx.random.key` stream instead of the global MLX generator.
        `silence_tokens`/`sine_tokens`/`text_pad`: prompt-phase constants (defaults: the real ones).
        `compile`: run sampling calls through `mx.compile`d graphs (default: only on a GPU, where it
        pays; on the CPU backend every fused kernel is first built with the system C++ compiler).
        `kv_bits`: 8 for 8-bit temporal KV rings (a loaded model's `ModelInfo.kv_bits`), None: the LM dtype.
        `phase_timing`: time the temporal transformer and the depformer separately (`last_timings_ms`;
        a synchronisation between them)."""
        config = lm.config
        self.kv_bits = kv_bits
        self.lm = lm
        self.config = config
        self.depformer_steps = lm.depformer.steps if depformer_steps is None else depformer_steps
        if not 0 < self.depformer_steps <= lm.depformer.steps:
            raise ValueError(f"depformer_steps must be in 1..{lm.depformer.steps}, got {depformer_steps}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.batch_prefill = batch_prefill
        self.prefill_chunk = prefill_chunk
        self.per_speaker = config.n_q // 2
        self.silence_tokens = self._codes(silence_tokens, "silence_tokens")
        self.sine_tokens = self._codes(sine_tokens, "sine_tokens")
        self.text_pad = config.text_padding_id if text_pad is None else text_pad
        self.seed = seed
        self.phase_timing = phase_timing
        self._step = LMStep(lm, text_sampling, audio_sampling,
                            mx.default_device() == mx.gpu if compile is None else compile)
        self._live_open = False
        self.reset()

    # ------------------------------------------------------------------------------------ state

    @property
    def last_timings_ms(self) -> dict[str, float]:
        """The last sampling call's temporal / depformer split (with `phase_timing`)."""
        return self._step.last_timings_ms if self.phase_timing else {}

    def reset(self) -> None:
        """Start a new sequence: call counter 0, no provided tokens, fresh KV caches and key."""
        config = self.config
        self.ring = TokenRing(config.delays, np.array([config.text_init_token] + [config.audio_init_token] * config.n_q))
        self._cache = self.lm.make_cache(1, bits=self.kv_bits)
        self._keys = None if self.seed is None else mx.random.key(self.seed)[None]
        self._pending: list[np.ndarray | mx.array] = []
        self._live_open = False

    def reseed(self, seed: int | None) -> None:
        """Draw from an explicit key stream started at `seed` from now on, and again at each `reset`
        (None: MLX's global generator)."""
        self.seed = seed
        self._keys = None if seed is None else mx.random.key(seed)[None]

    def eval_state(self) -> None:
        """Evaluate every lazy state array now.

        MLX cannot evaluate on one thread a graph that was built on another, so whoever
        prepares the generator on one thread and steps it on another calls this in between.
        """
        mx.eval(self.pending_arrays())

    def pending_arrays(self) -> list[mx.array]:
        """Every state array a call updates (KV caches, random key): evaluate them with the call's output
        so that no lazy graph is carried from one call into the next."""
        key = list(mx.random.state) if self._keys is None else [self._keys]
        return [a for c in self._cache for a in c.state] + key

    def conversation_state(self) -> ConversationState:
        """This conversation, prepared (prompts flushed, state evaluated), for `BatchLMGen.join`."""
        self._refuse_open_live_step()
        self.flush()
        self.eval_state()
        return ConversationState(self._cache, self._keys, self.ring.copy())

    @property
    def offset(self) -> int:
        """The index of the next call."""
        return self.ring.offset

    def set_token_ring(self, ring: np.ndarray) -> None:
        """Overwrite the token ring (a `.pt` voice's saved `cache`); provided flags stay as they are."""
        self.ring.tokens[:] = np.asarray(ring).reshape(self.ring.tokens.shape)

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
        if self.offset <= self.config.max_delay or self.depformer_steps > self.per_speaker:
            return self._step_resolved(user_codes)
        call = live_call(self.ring, self.per_speaker, self.depformer_steps)
        self.flush()
        arrays = self._launch(call, call.model_input, self.depformer_steps)
        sampled = arrays.sampled[0]
        fresh, known = fresh_agent_codes(self.ring, call, self.per_speaker)
        agent_codes = mx.where(mx.array(fresh), sampled[1 : 1 + self.per_speaker], mx.array(known))
        user_codes = mx.array(user_codes).reshape(-1)
        self._live_open = True

        def commit() -> StepOutput:
            if not self._live_open or self.offset != call.n:
                raise RuntimeError("LiveStep.result() must be called once, before the next call")
            self.ring.fill_target(call, np.array(sampled, dtype=np.int64))
            for q, token in enumerate(self._codes(np.array(user_codes), "user_codes")):
                self.ring.write(1 + self.per_speaker + q, int(token))
            self._live_open = False
            return StepOutput(self.ring.finish_call(call))

        return LiveStep(agent_codes, [arrays.sampled, user_codes, agent_codes, *self.pending_arrays()], commit)

    def _step_resolved(self, user_codes: mx.array) -> LiveStep:
        """A live call made synchronously with `step`, as an already resolved `LiveStep`."""
        out = self.step(user_codes=np.array(user_codes))
        done = None if out is None else mx.array(out.agent_codes.astype(np.int32))
        return LiveStep(done, [], lambda: out)

    def step_embeddings(self, embedding: np.ndarray | mx.array) -> StepOutput | None:
        """Replay one stored input embedding [dim] instead of the embedded token column (spec §6.3).

        Like the reference, dummy tokens (audio INIT, text PAD) are written as provided, and a
        first call also lets call 0 pass.
        """
        self._refuse_open_live_step()
        embedding = mx.array(embedding).reshape(-1)
        if embedding.shape[0] != self.config.dim:
            raise ValueError(f"voice embedding has {embedding.shape[0]} values, the LM dim is {self.config.dim}")
        dummy = np.full(self.per_speaker, self.config.audio_init_token)
        while not self._prepare(dummy, dummy, self.text_pad):
            pass
        return self._model_call(embedding)

    def flush(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Run queued prefill columns through the transformer now (batched, in chunks); `progress`
        hears (columns done, columns queued) after each chunk."""
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
        total = x.shape[1]
        for start in range(0, total, self.prefill_chunk):
            self.lm.prefill(x[:, start : start + self.prefill_chunk], self._cache)
            mx.eval([c.state for c in self._cache])
            if progress is not None:
                progress(min(start + self.prefill_chunk, total), total)

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
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Prompt phases of spec §6.1: voice -> silence -> text -> silence.

        `voice`: agent Mimi codes [8, N_v] (or [1, 8, N_v]) of a voice recording, a `VoiceEmbeddings`,
        or None. Each text token is one call; the user stream is the sine tokens throughout.
        Queued prefill is flushed at the end, so the KV cache is ready for live calls; `progress`
        hears how many of the queued columns have run (`flush`).
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
        self.flush(progress)

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

    def _prepare(self, user: np.ndarray | None, agent: np.ndarray | None, text: int | None) -> bool:
        """Write supplied tokens and start-of-sequence INITs; False if this was call 0 (nothing runs)."""
        if user is not None:
            for q, token in enumerate(user):
                self.ring.write(1 + self.per_speaker + q, int(token))
        if agent is not None:
            for q, token in enumerate(agent):
                self.ring.write(1 + q, int(token))
        if text is not None:
            if not 0 <= int(text) <= self.config.text_card:
                raise ValueError(f"text_token must be in 0..{self.config.text_card}, got {text}")
            self.ring.write(0, int(text))
        return self.ring.start_call()

    def _model_call(self, embedding: mx.array | None) -> StepOutput | None:
        call = self.ring.columns()
        source = embedding if embedding is not None else call.model_input
        if not call.provided.all():
            self.flush()
            self.ring.fill_target(call, self._predict(call, source))
        elif self.batch_prefill:
            self._pending.append(source)
        else:
            self._prefill_call(call, source)
        out = self.ring.finish_call(call)
        return None if out is None else StepOutput(out)

    def _refuse_open_live_step(self) -> None:
        if self._live_open:
            raise RuntimeError("the previous LiveStep has not been resolved: call its result() first")

    def _prefill_call(self, call: CallColumns, source: np.ndarray | mx.array) -> None:
        """A call whose target is entirely provided, run now: the transformer only, for its KV cache."""
        x = self.lm.embed_codes(mx.array(source)[None, :, None]) if isinstance(source, np.ndarray) else source.reshape(1, 1, -1)
        self.lm.prefill(x, self._cache)
        mx.eval([c.state for c in self._cache])

    def _launch(self, call: CallColumns, source: np.ndarray | mx.array, steps: int) -> StepArrays:
        """The call's model work through `LMStep` (lazy), KV caches and key updated."""
        src = mx.array(source.astype(np.int32))[None] if isinstance(source, np.ndarray) else source.reshape(1, -1)
        arrays, self._keys = self._step.run(
            self._cache,
            self._keys,
            src,
            mx.array(call.target[:1].astype(np.int32)),
            mx.array(call.provided[:1]),
            mx.array(call.target[None, 1 : 1 + steps].astype(np.int32)),
            mx.array(call.provided[None, 1 : 1 + steps]),
            phase_timing=self.phase_timing,
        )
        return arrays

    def _predict(self, call: CallColumns, source: np.ndarray | mx.array) -> np.ndarray:
        """Transformer on the input column, text sample, depformer; returns the sampled
        [1 + steps] tokens (text, then streams 1..steps) before forcing."""
        check_predictable(call.provided, self.depformer_steps)
        arrays = self._launch(call, source, self.depformer_steps)
        mx.eval(arrays.sampled, self.pending_arrays())
        return np.array(arrays.sampled[0], dtype=np.int64)


def check_predictable(provided: np.ndarray, steps: int) -> None:
    """Refuse a call whose target column has streams neither provided nor predicted by `steps` steps."""
    unforced = np.flatnonzero(~provided[1 + steps :])
    if unforced.size:
        raise ValueError(
            f"stream(s) {(unforced + 1 + steps).tolist()} are neither provided nor predicted: with "
            f"{steps} depformer steps, user codes must be given at every call"
        )


def live_call(ring: TokenRing, per_speaker: int, steps: int) -> CallColumns:
    """The ring's next call as a live call: the user codes (written when the call resolves) count as
    provided, since call n reads the user codes of earlier calls only."""
    call = ring.columns()
    provided = call.provided.copy()
    provided[1 + per_speaker :] = True
    check_predictable(provided, steps)
    return replace(call, provided=provided)


def fresh_agent_codes(ring: TokenRing, call: CallColumns, per_speaker: int) -> tuple[np.ndarray, np.ndarray]:
    """Which agent codes of the frame call n returns come from this call's samples ([per_speaker]
    bool: streams of the largest delay, unless provided), and the rest, already in the ring."""
    columns = (call.n - ring.max_delay + ring.delays) % ring.slots
    agents = np.arange(1, 1 + per_speaker)
    fresh = (columns[agents] == call.target_slot) & ~call.provided[agents]
    known = ring.tokens[agents, columns[agents]].astype(np.int32)
    return fresh, known
