"""`ModelPipeline`: PersonaPlex as a `FrameProcessor` — Mimi encode → LM step → Mimi decode.

One instance runs one conversation at a time: `start()` conditions the model (voice prompt,
silence, `<system>` role prompt, silence; spec §6.1) and `process()` then turns each
1920-sample microphone frame into one 1920-sample agent frame plus the text token of the
agent's inner monologue. The output is the agent's call-frame n−1 at call n (spec §5.3),
exactly as the reference's server and offline tool emit it.

A frame is built as one lazy graph (Mimi encode → LM call → Mimi decode, each `mx.compile`d on a
GPU) and evaluated once. With `phase_timing` the pipeline synchronises between the phases instead,
so that `timings_ms` splits the frame into encode / temporal / depformer / decode; without it only
`total` is measured, at one host synchronisation per frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from ppchat.constants import DEPFORMER_STEPS, SILENCE_TOKENS, SINE_TOKENS
from ppchat.errors import PPChatError
from ppchat.models.generator import LMGen, VoiceEmbeddings
from ppchat.models.lm import LMConfig
from ppchat.models.loader import LoadedModel
from ppchat.models.mimi import Mimi
from ppchat.sampling import Sampling

if TYPE_CHECKING:  # voices and the runtime pull in audio-file libraries that `ppchat bench` does without
    from ppchat.engine.runtime import FrameResult
    from ppchat.models.voices import VoicePrompt

# int(0.5 * 12.5): silence frames before and after the role prompt (spec §6.1).
SILENCE_FRAMES = 6
# A voice file is Mimi-encoded frame by frame and evaluated every this many frames (one host
# synchronisation each; per frame cost ~30 % more on the CPU backend).
ENCODE_EVAL_FRAMES = 8

# (task, done, total): how far conditioning has got (`ProgressEvent` on the bus).
Progress = Callable[[str, int, int], None]


@dataclass
class PrefillReport:
    voice_frames: int
    prompt_tokens: int
    calls: int
    seconds: float
    timings_ms: dict[str, float] = field(default_factory=dict)


def _prompt_constant(tokens: tuple[int, ...], card: int) -> tuple[int, ...]:
    # The real constants are codes of the 2048-entry codebooks. Smaller test and demo models
    # use them modulo their card, as the reference fixtures do.
    return tokens if card > max(tokens) else tuple(t % card for t in tokens)


def fit_sampling(sampling: Sampling, config: LMConfig) -> Sampling:
    """`sampling` on this model: a top-k beyond a vocabulary is that vocabulary. Every generator
    of a model samples with these (a change of settings means new compiled graphs)."""
    return replace(
        sampling,
        text=replace(sampling.text, top_k=min(sampling.text.top_k, config.text_card)),
        audio=replace(sampling.audio, top_k=min(sampling.audio.top_k, config.card)),
    )


def make_generator(
    model: LoadedModel, sampling: Sampling, depformer_steps: int | None = DEPFORMER_STEPS, *, phase_timing: bool = True
) -> LMGen:
    """The `LMGen` of one conversation with these sampling settings (and seed)."""
    lm = model.lm
    card = lm.config.card
    fitted = fit_sampling(sampling, lm.config)
    return LMGen(
        lm,
        text_sampling=fitted.text,
        audio_sampling=fitted.audio,
        depformer_steps=min(depformer_steps or lm.depformer.steps, lm.depformer.steps),
        seed=sampling.seed,
        kv_bits=model.info.kv_bits,
        silence_tokens=_prompt_constant(SILENCE_TOKENS, card),
        sine_tokens=_prompt_constant(SINE_TOKENS, card),
        phase_timing=phase_timing,
    )


def role_prompt_tokens(model: LoadedModel, prompt_text: str) -> list[int]:
    """The `<system>` role prompt's text tokens, refused if the tokenizer does not fit the model."""
    text_tokens = model.tokenizer.encode_system_prompt(prompt_text)
    too_big = [t for t in text_tokens if t >= model.lm.config.text_card]
    if too_big:
        raise PPChatError(
            f"the tokenizer produced ids {too_big[:4]} outside the model's text vocabulary "
            f"({model.lm.config.text_card}); the tokenizer does not belong to this model"
        )
    return text_tokens


def voice_argument(voice: VoicePrompt | VoiceEmbeddings | None, mimi: Mimi, progress: Progress | None = None):
    """(what `LMGen.run_system_prompts` takes as `voice`, its frame count) for a loaded voice prompt;
    an audio voice is encoded with `mimi` on a one-row stream (its streaming state is put back),
    reported to `progress` as task "voice prompt"."""
    if voice is None:
        return None, 0
    if isinstance(voice, VoiceEmbeddings):
        return voice, len(voice.embeddings) + 1
    if voice.kind == "embeddings":
        return VoiceEmbeddings(voice.embeddings, voice.cache), voice.n_frames
    if voice.kind == "codes":
        return np.asarray(voice.codes), voice.n_frames
    if voice.kind == "audio":
        codes = encode_voice_audio(mimi, voice.pcm, progress)
        return codes, codes.shape[1]
    raise PPChatError(f"voice {voice.name!r} has an unknown kind {voice.kind!r}")


def prefill_progress(progress: Progress | None) -> Callable[[int, int], None] | None:
    """What `LMGen.run_system_prompts` takes as `progress`: reported to `progress` as task "prompt prefill"."""
    return None if progress is None else lambda done, total: progress("prompt prefill", done, total)


def encode_voice_audio(mimi: Mimi, pcm: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """Mimi codes [8, N] of a 24 kHz mono voice prompt (spec §6.2: only the last chunk is padded),
    on a fresh one-row stream; `mimi`'s streaming state is left as it was. `progress` hears
    ("voice prompt", frames encoded, N) every `ENCODE_EVAL_FRAMES` frames and at the end."""
    n = -(-len(pcm) // mimi.frame_size)
    if n == 0:
        raise PPChatError("the voice prompt audio is empty")
    padded = np.zeros(n * mimi.frame_size, dtype=np.float32)
    padded[: len(pcm)] = pcm
    saved = mimi.streaming_state()
    mimi.reset()
    try:
        codes = []
        for i in range(n):
            codes.append(mimi.encode_step(mx.array(padded[i * mimi.frame_size:(i + 1) * mimi.frame_size]).reshape(1, 1, -1)))
            if (i + 1) % ENCODE_EVAL_FRAMES == 0 or i + 1 == n:
                # Evaluated as it goes, so that progress means work done (and the graph stays small).
                mx.eval(codes[-1], mimi.streaming_state())
                if progress is not None:
                    progress("voice prompt", i + 1, n)
        out = np.array(mx.concatenate(codes, axis=-1)[0], dtype=np.int64)
    finally:
        mimi.set_streaming_state(saved)
    return out


class ModelPipeline:
    """The model side of the duplex engine (implements `engine.runtime.FrameProcessor`)."""

    def __init__(
        self,
        model: LoadedModel,
        sampling: Sampling | None = None,
        depformer_steps: int | None = DEPFORMER_STEPS,
        phase_timing: bool = True,
    ):
        self.model = model
        self.phase_timing = phase_timing
        self.sampling = sampling or Sampling()
        self.mimi = model.mimi
        self.frame_size = self.mimi.frame_size
        self.sample_rate = self.mimi.sample_rate
        card = model.lm.config.card
        self.gen = make_generator(model, self.sampling, depformer_steps, phase_timing=phase_timing)
        self._silence_codes_mx = mx.array(np.array(_prompt_constant(SILENCE_TOKENS, card), dtype=np.int32))
        self._in = np.zeros((1, 1, self.frame_size), dtype=np.float32)
        self.started = False

    def set_sampling(self, sampling: Sampling) -> None:
        """Sample with these settings from the next `start` on (`fit_sampling`)."""
        self.sampling = sampling
        fitted = fit_sampling(sampling, self.model.lm.config)
        self.gen.text_sampling, self.gen.audio_sampling = fitted.text, fitted.audio
        self.gen.reseed(sampling.seed)

    # ----------------------------------------------------------------------------- conditioning

    def start(self, voice: VoicePrompt | VoiceEmbeddings | None, prompt_text: str,
              progress: Progress | None = None) -> PrefillReport:
        """Reset everything and run the prompt phases; the next `process` is the first live call.

        `voice` is a loaded voice prompt, or directly the `VoiceEmbeddings` of a `.pt` voice.
        `progress` hears how far the voice encoding and the prefill have got; an exception it raises
        (a stop request) abandons the conditioning, and `process` is refused until a start ends."""
        self.started = False  # nothing half-built is stepped: only a start that ran to its end sets it
        t0 = time.perf_counter()
        if self.sampling.seed is not None:
            mx.random.seed(self.sampling.seed)
        text_tokens = role_prompt_tokens(self.model, prompt_text)
        self.mimi.reset()
        self.gen.reset()
        voice_arg, voice_frames = voice_argument(voice, self.mimi, progress)
        t_prompts = time.perf_counter()
        self.gen.run_system_prompts(voice=voice_arg, text_tokens=text_tokens, silence_frames=SILENCE_FRAMES,
                                    progress=prefill_progress(progress))
        t_done = time.perf_counter()
        # The encoder heard the voice prompt; live audio starts from fresh codec state (spec §6.1).
        self.mimi.reset()
        # `process` runs on the step thread, and MLX evaluates a graph only on the thread that built it.
        mx.eval(self.mimi.state)
        self.gen.eval_state()
        self.started = True
        return PrefillReport(
            voice_frames=voice_frames,
            prompt_tokens=len(text_tokens),
            calls=self.gen.offset,
            seconds=t_done - t0,
            timings_ms={"voice_encode": (t_prompts - t0) * 1e3, "prefill": (t_done - t_prompts) * 1e3},
        )

    # ------------------------------------------------------------------------------------- live

    def process(self, pcm: np.ndarray) -> FrameResult:
        from ppchat.engine.runtime import FrameResult

        frame, token, timings = self.run_frame(pcm)
        piece = self.model.tokenizer.piece(token) if token is not None else None
        return FrameResult(pcm=frame, text_token=token, text_piece=piece, timings_ms=timings)

    def thread_ended(self) -> None:
        """The step thread is ending: destroy the MLX streams it made, on that thread. Left to the
        process's exit they abort it now and then ("terminate called without an active exception",
        ml-explore/mlx#3126; seen with serve's batch thread). The model's arrays are evaluated and
        stay usable from the next step thread."""
        mx.clear_streams()

    def run_frame(self, pcm: np.ndarray) -> tuple[np.ndarray, int | None, dict[str, float]]:
        """One live frame: (agent PCM [frame_size] float32, text token or None, timings in ms)."""
        if not self.started:
            raise RuntimeError("ModelPipeline.start() must run before process()")
        t0 = time.perf_counter()
        self._in[0, 0, :] = pcm
        codes = self.mimi.encode_step(mx.array(self._in))
        if self.phase_timing:
            mx.eval(codes, self.mimi.streaming_state())
        t1 = time.perf_counter()
        live = self.gen.step_live(codes[0, :, 0])
        t2 = time.perf_counter()
        agent_codes = self._silence_codes_mx if live.agent_codes is None else live.agent_codes
        audio = self.mimi.decode_step(agent_codes.reshape(1, -1, 1))
        mx.eval(audio, live.arrays, self.mimi.streaming_state())
        out = live.result()
        frame = np.array(audio[0, 0], dtype=np.float32)
        t3 = time.perf_counter()
        token = out.text_token if out is not None else None  # None only if start() ran no prompt at all
        timings = {"total": (t3 - t0) * 1e3}
        if self.phase_timing:
            timings.update({"encode": (t1 - t0) * 1e3, **self.gen.last_timings_ms, "decode": (t3 - t2) * 1e3})
        return frame, token, timings
