"""The user's track → timed utterances → text, streaming: one code path for `transcribe` and live captions.

Audio comes in at 24 kHz, as recorded, and is resampled to 16 kHz with soxr's streaming
resampler (its output does not depend on how the input is cut, and equals a one-shot
`soxr.resample`), then split into utterances by `Segmenter`. Each closed utterance is
transcribed whole and emitted as a "final"; on request, the one still being spoken is
transcribed so far as a "partial". Only the audio an open utterance still needs is
kept, so a track of any length takes little memory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ppchat.asr.segmenter import RATE, Segmenter, SegmenterSettings
from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE

PARTIAL_EVERY_S = 1.5
PARTIAL_WINDOW_S = 6.0  # a partial reads only the utterance's latest seconds: its cost stays flat
MAX_GAP_FRAMES = 30 * SAMPLE_RATE // FRAME_SAMPLES  # lost frames beyond this (30 s): start afresh


class UtteranceStream:
    """`transcribe(clip16k) -> str`; `emit(dict)` gets {"type": "final"|"partial", "start", "end", "text"}."""

    def __init__(self, transcribe: Callable[[np.ndarray], str], emit: Callable[[dict], None],
                 settings: SegmenterSettings = SegmenterSettings()):  # fmt: skip
        self._transcribe = transcribe
        self._emit = emit
        self._settings = settings
        self.reset()

    def reset(self, first_step: int = 0) -> None:
        """Forget everything; the next audio is step `first_step` of the session."""
        import soxr

        self._resampler = soxr.ResampleStream(SAMPLE_RATE, RATE, 1, dtype="float32", quality="HQ")
        self._segmenter = Segmenter(self._settings)
        self._audio = np.zeros(0, dtype=np.float32)  # 16 kHz, from sample `_origin` of the stream
        self._origin = 0
        self._t0 = first_step * FRAME_SAMPLES / SAMPLE_RATE  # session time of the stream's sample 0
        self._next_step = first_step
        self._partial_at = 0  # segmenter position of the last partial

    @property
    def heard_step(self) -> int:
        """The last step taken in (`add`)."""
        return self._next_step - 1

    def add(self, step: int, pcm: np.ndarray) -> None:
        """One live step's audio. Lost steps become silence, so times stay on the session clock."""
        if step < self._next_step:
            return  # already heard: the feeder sends steps in order
        if step - self._next_step > MAX_GAP_FRAMES:
            self.reset(step)  # joined mid-conversation (a restarted worker) or lost a long stretch
        if step > self._next_step:
            pcm = np.concatenate([np.zeros((step - self._next_step) * FRAME_SAMPLES, np.float32), pcm])
        self._next_step = step + 1
        self.feed(pcm)

    def feed(self, pcm: np.ndarray, last: bool = False) -> None:
        """Contiguous 24 kHz audio; `last` ends the track (what is open is transcribed).
        Non-finite samples (a damaged recording) count as silence."""
        pcm = np.nan_to_num(np.asarray(pcm, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        audio = self._resampler.resample_chunk(pcm, last=last)
        self._audio = np.concatenate([self._audio, audio])
        spans = self._segmenter.feed(audio) + (self._segmenter.flush() if last else [])
        for span in spans:
            text = self._transcribe(self._clip(span.start, span.end))
            self._emit({"type": "final", "start": self._time(span.start), "end": self._time(span.end), "text": text})
        self._trim()

    def maybe_partial(self) -> None:
        """Transcribe the utterance being spoken, if it grew by `PARTIAL_EVERY_S` since the last time."""
        start = self._segmenter.open_start
        pos = self._segmenter.position
        if start is None or pos - max(self._partial_at, start) < PARTIAL_EVERY_S * RATE:
            return
        self._partial_at = pos
        start = max(start, pos - round(PARTIAL_WINDOW_S * RATE))
        text = self._transcribe(self._clip(start, pos))
        self._emit({"type": "partial", "start": self._time(start), "text": text})

    def _time(self, sample: int) -> float:
        return round(self._t0 + sample / RATE, 3)

    def _clip(self, start: int, end: int) -> np.ndarray:
        return self._audio[start - self._origin : end - self._origin]

    def _trim(self) -> None:
        # Keep what an open utterance needs, or, in silence, the padding a new one would take.
        keep_from = self._segmenter.open_start
        if keep_from is None:
            keep_from = max(0, self._segmenter.position - RATE)
        drop = keep_from - self._origin
        if drop > 0:
            self._audio = self._audio[drop:]
            self._origin = keep_from
