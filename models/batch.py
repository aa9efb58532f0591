"""`BatchLMGen`: live calls of many conversations in one batched step (one row per conversation).

A conversation is prepared alone, by an `LMGen` (prompts, voice, its own seed), then joins a free
row: its one-row KV caches, key and token ring move in (`join`). Every row then has its own ring KV
cache position (`RingKVCache(per_row=True)`), its own token ring and its own random key, and a step
runs the temporal transformer and the depformer once for all rows. Rows leave (`leave`) and others
join without stopping the rest. A row draws from its own key only, and the batched step computes for
each row what a one-row step computes, so a conversation's tokens are the ones it would get alone
(`tests/test_batch.py` holds that, token for token).

Free rows still go through the step (the step's shape stays fixed, so its compiled graphs and
kernels are reused); their results are dropped and a join overwrites everything they wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from ppchat.constants import DEPFORMER_STEPS
from ppchat.models.generator import LMGen, StepOutput, fresh_agent_codes, live_call
from ppchat.models.lm import LM
from ppchat.models.lm_step import LMStep, RunsLMStep
from ppchat.models.token_ring import CallColumns, TokenRing
from ppchat.sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, SamplingParams


@dataclass
class BatchLiveStep:
    """A batched live call built by `BatchLMGen.step_live`, not yet evaluated.

    `agent_codes` (int32 [capacity, per_speaker], lazy) is each row's agent output frame, for Mimi's
    decoder in the same graph; evaluate `arrays` with it, then call `result()` once before the next
    step: it returns {row: StepOutput} for the rows that hold a conversation."""

    agent_codes: mx.array
    arrays: list[mx.array]
    _commit: Callable[[], dict[int, StepOutput]] = field(repr=False)

    def result(self) -> dict[int, StepOutput]:
        return self._commit()


class BatchLMGen(RunsLMStep):
    """Up to `capacity` conversations over one `LM`, stepped together."""

    def __init__(
        self,
        lm: LM,
        capacity: int,
        *,
        text_sampling: SamplingParams = TEXT_DEFAULTS,
        audio_sampling: SamplingParams = AUDIO_DEFAULTS,
        depformer_steps: int = DEPFORMER_STEPS,
        compile: bool | None = None,
        kv_bits: int | None = None,
    ):
        """`kv_bits`: the temporal KV rings' precision, as the joining conversations' (`LMGen`)."""
        if capacity < 1:
            raise ValueError(f"a batch needs at least one row, got capacity {capacity}")
        self.lm = lm
        self.config = lm.config
        self.capacity = capacity
        self.per_speaker = lm.config.n_q // 2
        if not 0 < depformer_steps <= min(lm.depformer.steps, self.per_speaker):
            raise ValueError(
                f"depformer_steps must be in 1..{min(lm.depformer.steps, self.per_speaker)} (agent streams only), "
                f"got {depformer_steps}"
            )
        self.depformer_steps = depformer_steps
        self._step = LMStep(lm, text_sampling, audio_sampling,
                            mx.default_device() == mx.gpu if compile is None else compile)
        self.kv_bits = kv_bits
        self._cache = lm.make_cache(capacity, per_row=True, bits=kv_bits)
        self._keys = mx.random.split(mx.random.key(0), capacity)
        self.rings: list[TokenRing | None] = [None] * capacity
        self._open = False
        init = np.array([lm.config.text_init_token] + [lm.config.audio_init_token] * lm.config.n_q)
        self._idle_input = init.astype(np.int32)
        mx.eval(self.pending_arrays())

    @property
    def free_rows(self) -> list[int]:
        return [row for row, ring in enumerate(self.rings) if ring is None]

    # ------------------------------------------------------------------------------ rows

    def join(self, gen: LMGen) -> int:
        """Move a prepared conversation (its prompts run, its sampling settings and step count the
        batch's, seeded) into a free row; returns the row. `gen` is not used by the batch afterwards."""
        self._refuse_open()
        free = self.free_rows
        if not free:
            raise RuntimeError(f"all {self.capacity} rows hold a conversation: one must leave first")
        if gen.lm is not self.lm:
            raise ValueError("the conversation runs on another model than the batch")
        if (gen.text_sampling, gen.audio_sampling, gen.depformer_steps, gen.kv_bits) != (
            self.text_sampling, self.audio_sampling, self.depformer_steps, self.kv_bits
        ):
            raise ValueError("the conversation's sampling settings, depformer steps or KV bits differ from the batch's")
        state = gen.conversation_state()
        if state.keys is None:
            raise ValueError("a conversation joins a batch with its own seed (LMGen(seed=...)), not the global generator")
        if state.ring.offset <= self.config.max_delay:
            raise ValueError("the conversation has not run its prompt calls yet (run_system_prompts)")
        row = free[0]
        for mine, theirs in zip(self._cache, state.cache):
            mine.load_row(row, theirs)
        self._keys[row] = state.keys[0]
        self.rings[row] = state.ring
        mx.eval(self.pending_arrays())
        return row

    def leave(self, row: int) -> None:
        """Free a row (its conversation ends); the other rows are untouched."""
        self._refuse_open()
        if not 0 <= row < self.capacity or self.rings[row] is None:
            raise ValueError(f"row {row} holds no conversation")
        self.rings[row] = None

    def pending_arrays(self) -> list[mx.array]:
        """Every state array a step updates (KV caches, keys)."""
        return [a for c in self._cache for a in c.state] + [self._keys]

    # ------------------------------------------------------------------------------ steps

    def step_live(self, user_codes: mx.array) -> BatchLiveStep:
        """One live call of every row; `user_codes` int [capacity, per_speaker] (may be lazy, e.g.
        straight from a batched Mimi encoder; rows without a conversation are ignored)."""
        self._refuse_open()
        steps = self.depformer_steps
        calls: dict[int, CallColumns] = {
            row: live_call(ring, self.per_speaker, steps) for row, ring in enumerate(self.rings) if ring is not None
        }
        b = self.capacity
        source = np.tile(self._idle_input, (b, 1))
        text_given = np.zeros(b, dtype=np.int32)
        text_mask = np.ones(b, dtype=bool)
        forced = np.zeros((b, steps), dtype=np.int32)
        forced_mask = np.ones((b, steps), dtype=bool)
        fresh = np.zeros((b, self.per_speaker), dtype=bool)
        known = np.zeros((b, self.per_speaker), dtype=np.int32)
        for row, call in calls.items():
            source[row] = call.model_input
            text_given[row], text_mask[row] = call.target[0], call.provided[0]
            forced[row], forced_mask[row] = call.target[1 : 1 + steps], call.provided[1 : 1 + steps]
            fresh[row], known[row] = fresh_agent_codes(self.rings[row], call, self.per_speaker)
        arrays, self._keys = self._step.run(
            self._cache, self._keys, mx.array(source), mx.array(text_given), mx.array(text_mask),
            mx.array(forced), mx.array(forced_mask),
        )
        sampled = arrays.sampled
        agent_codes = mx.where(mx.array(fresh), sampled[:, 1 : 1 + self.per_speaker], mx.array(known))
        user_codes = mx.array(user_codes).reshape(b, self.per_speaker)
        self._open = True

        def commit() -> dict[int, StepOutput]:
            if not self._open:
                raise RuntimeError("BatchLiveStep.result() must be called once, before the next step")
            tokens = np.array(sampled, dtype=np.int64)
            users = np.array(user_codes, dtype=np.int64)
            out = {}
            for row, call in calls.items():
                ring = self.rings[row]
                ring.fill_target(call, tokens[row])
                codes = users[row]
                if codes.min() < 0 or codes.max() > self.config.card:
                    raise ValueError(f"user codes of row {row} must be in 0..{self.config.card}, got {codes.tolist()}")
                for q, token in enumerate(codes):
                    ring.write(1 + self.per_speaker + q, int(token))
                out[row] = StepOutput(ring.finish_call(call))
            self._open = False
            return out

        return BatchLiveStep(agent_codes, [sampled, user_codes, agent_codes, *self.pending_arrays()], commit)

    def _refuse_open(self) -> None:
        if self._open:
            raise RuntimeError("the previous BatchLiveStep has not been resolved: call its result() first")
