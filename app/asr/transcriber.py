"""Qwen3-ASR over a recorded 24 kHz track: the timed segments `ppchat transcribe` stores.

mlx-qwen3-asr assumes 16 kHz for a bare array and would shell out to ffmpeg for any
other rate, so ppchat resamples with soxr first (`UtteranceStream`) and only ever hands
it 16 kHz float32 arrays (no ffmpeg needed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ppchat.asr.segmenter import SegmenterSettings
from ppchat.asr.utterances import UtteranceStream
from ppchat.constants import SAMPLE_RATE

TRACK_RATE = SAMPLE_RATE


class Segment(NamedTuple):
    start: float  # seconds from the start of the session
    end: float
    text: str


class Transcriber:
    """A loaded Qwen3-ASR model (from a local folder: see `model_files.resolve_asr_model`)."""

    def __init__(self, folder: Path, language: str | None = None):
        import mlx_qwen3_asr

        self._asr = mlx_qwen3_asr
        self.model, _ = mlx_qwen3_asr.load_model(str(folder))
        self.language = language

    def text(self, clip16k: np.ndarray) -> str:
        result = self._asr.transcribe(np.asarray(clip16k, dtype=np.float32), model=self.model, language=self.language)
        return " ".join(result.text.split())


CHUNK = 10 * TRACK_RATE  # the track is read in 10 s pieces: memory stays flat for any length


def transcribe_track(
    track: np.ndarray,
    transcriber: Transcriber,
    *,
    settings: SegmenterSettings = SegmenterSettings(),
    progress: Callable[[float, float, int], None] | None = None,
) -> list[Segment]:
    """Timed segments of the speech in a 24 kHz `track`, in order.

    `progress(seconds_done, seconds_total, segments_so_far)` after each piece."""
    segments: list[Segment] = []

    def keep(doc: dict) -> None:
        segments.append(Segment(doc["start"], doc["end"], " ".join(doc["text"].split())))

    stream = UtteranceStream(transcriber.text, keep, settings)
    total = len(track)
    for lo in range(0, max(total, 1), CHUNK):
        hi = min(lo + CHUNK, total)
        stream.feed(track[lo:hi], last=hi >= total)
        if progress is not None:
            progress(hi / TRACK_RATE, total / TRACK_RATE, len(segments))
    return segments
