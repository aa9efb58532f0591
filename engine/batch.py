"""`BatchPipeline`: many conversations on one model, one batched frame for all of them.

Each conversation holds a row: its own Mimi streams (a row of a batched Mimi), its own LM row
(`models.batch.BatchLMGen`: KV cache position, token ring, random key) and its own frame counts. A
frame is one lazy graph for every row — Mimi encode → LM step → Mimi decode — evaluated once, as
`ModelPipeline` does for one conversation. Sampling temperatures and top-k are the batch's; the seed,
voice and role prompt are each conversation's.

`join` conditions a new conversation alone (its prompt phases on a one-row `LMGen`: `condition`) and
moves it into a free row (`admit`), between frames; `leave` frees a row. Both run on the thread that runs the frames (MLX
evaluates a graph only on the thread that built it). Conditioning takes a prompt's prefill time
(BENCHMARKS.md), during which no frame runs: a server admits joins between frames and counts that
time against the rows already talking.

A row's frames are late when the whole batched frame took longer than the 80 ms a frame lasts; every
conversation keeps its own count from the frame it joined (`RowStats`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace

import mlx.core as mx
import numpy as np

from ppchat.constants import DEPFORMER_STEPS, FRAME_MS
from ppchat.engine.pipeline import (
    SILENCE_FRAMES,
    PrefillReport,
    Progress,
    fit_sampling,
    make_generator,
    prefill_progress,
    role_prompt_tokens,
    voice_argument,
)
from ppchat.models.batch import BatchLMGen
from ppchat.models.generator import LMGen
from ppchat.models.loader import LoadedModel
from ppchat.sampling import Sampling


@dataclass
class RowStats:
    """One conversation's frames since it joined: count, late ones (> 80 ms) and frame times (ms)."""

    conversation: int
    joined_frame: int
    prefill_seconds: float
    frames: int = 0
    late: int = 0
    frame_ms: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.frames += 1
        self.late += ms > FRAME_MS
        self.frame_ms.append(ms)


@dataclass(frozen=True)
class Conditioned:
    """A conversation whose prompts have run, waiting for a row (`BatchPipeline.admit`)."""

    gen: LMGen
    report: PrefillReport


@dataclass(frozen=True)
class RowFrame:
    """What one row's conversation produced this frame: agent PCM [frame_size] float32 and the text
    token of its inner monologue."""

    pcm: np.ndarray
    text_token: int


class BatchPipeline:
    """Up to `capacity` conversations stepped together on one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        capacity: int,
        sampling: Sampling | None = None,
        depformer_steps: int = DEPFORMER_STEPS,
        compile: bool | None = None,
    ):
        self.model = model
        self.capacity = capacity
        self.sampling = sampling or Sampling()
        self.mimi = model.mimi
        self.frame_size = self.mimi.frame_size
        self.sample_rate = self.mimi.sample_rate
        self.depformer_steps = min(depformer_steps, model.lm.depformer.steps)
        fitted = fit_sampling(self.sampling, model.lm.config)
        self.lm = BatchLMGen(
            model.lm, capacity,
            text_sampling=fitted.text,
            audio_sampling=fitted.audio,
            depformer_steps=self.depformer_steps,
            compile=compile,
            kv_bits=model.info.kv_bits,
        )
        self.mimi.reset(capacity)
        mx.eval(self.mimi.streaming_state())
        self.rows: dict[int, RowStats] = {}
        self.frames = 0
        self._ids = itertools.count(1)
        self._in = np.zeros((capacity, 1, self.frame_size), dtype=np.float32)

    @property
    def free_rows(self) -> list[int]:
        return self.lm.free_rows

    def join(self, voice, prompt_text: str, seed: int | None = None) -> int:
        """Condition a conversation (voice: a loaded voice prompt, `VoiceEmbeddings` or None; the role
        prompt text; its seed, or a fresh random one) and give it a free row; returns the row."""
        return self.admit(self.condition(voice, prompt_text, seed))

    def condition(self, voice, prompt_text: str, seed: int | None = None, progress: Progress | None = None) -> Conditioned:
        """`join`'s first half: run a conversation's prompts on its own, without taking a row yet (a
        server conditions while the connection sets up, and admits the row once it can step it).
        `progress` hears how far it has got, as for `ModelPipeline.start`; an exception it raises (a
        client that left) gives the conditioning up, leaving the batch as it was."""
        t0 = time.perf_counter()
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        sampling = replace(self.sampling, seed=seed)
        gen = make_generator(self.model, sampling, self.depformer_steps, phase_timing=False)
        voice_arg, voice_frames = voice_argument(voice, self.mimi, progress)
        text_tokens = role_prompt_tokens(self.model, prompt_text)
        gen.run_system_prompts(voice=voice_arg, text_tokens=text_tokens, silence_frames=SILENCE_FRAMES,
                               progress=prefill_progress(progress))
        gen.eval_state()
        report = PrefillReport(voice_frames=voice_frames, prompt_tokens=len(text_tokens), calls=gen.offset,
                               seconds=time.perf_counter() - t0)
        return Conditioned(gen, report)

    def admit(self, conditioned: Conditioned) -> int:
        """`join`'s second half: move a conditioned conversation into a free row; returns the row."""
        if not self.free_rows:
            raise RuntimeError(f"all {self.capacity} conversations are taken: one must leave first")
        row = self.lm.join(conditioned.gen)
        # The encoder heard the voice prompt on its own stream; live audio starts on a fresh one.
        self.mimi.reset_row(row)
        mx.eval(self.mimi.streaming_state())
        self.rows[row] = RowStats(next(self._ids), self.frames, conditioned.report.seconds)
        return row

    def leave(self, row: int) -> RowStats:
        """End the conversation in `row`; returns its frame counts."""
        self.lm.leave(row)
        return self.rows.pop(row)

    def run_frame(self, pcm: dict[int, np.ndarray]) -> tuple[dict[int, RowFrame], float]:
        """One frame of every conversation: microphone PCM [frame_size] per row (a missing row hears
        silence) -> (each row's output, the frame's wall time in ms)."""
        t0 = time.perf_counter()
        self._in[:] = 0.0
        for row, frame in pcm.items():
            if row not in self.rows:
                raise ValueError(f"row {row} holds no conversation")
            self._in[row, 0, :] = frame
        codes = self.mimi.encode_step(mx.array(self._in))
        live = self.lm.step_live(codes[:, :, 0])
        audio = self.mimi.decode_step(live.agent_codes[:, :, None])
        mx.eval(audio, live.arrays, self.mimi.streaming_state())
        outputs = live.result()
        pcm_out = np.array(audio[:, 0], dtype=np.float32)
        ms = (time.perf_counter() - t0) * 1e3
        self.frames += 1
        result = {}
        for row, out in outputs.items():
            self.rows[row].add(ms)
            result[row] = RowFrame(pcm_out[row], out.text_token)
        return result, ms

