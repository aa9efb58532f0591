"""Qwen3-ASR over a 24 kHz track: resample to 16 kHz, split into utterances, transcribe each.

mlx-qwen3-asr assumes 16 kHz for a bare array and would shell out to ffmpeg for any
other rate, so ppchat resamples with soxr first and only ever hands it 16 kHz float32
arrays (no ffmpeg needed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ppchat.asr.segmenter import RATE, SegmenterSettings, Span, split
from ppchat.constants import SAMPLE_RATE

TRACK_RATE = SAMPLE_RATE


class Segment(NamedTuple):
    start: float  # seconds from the start of the session
    end: float
    text: str


def to_16k(track: np.ndarray, rate: int = TRACK_RATE) -> np.ndarray:
    """Resample a mono float track to 16 kHz; non-finite samples become silence."""
    import soxr

    track = np.nan_to_num(np.asarray(track, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if rate == RATE or not len(track):
        return track
    return soxr.resample(track, rate, RATE, quality="HQ").astype(np.float32, copy=False)


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


def transcribe_track(
    track: np.ndarray,
    transcriber: Transcriber,
    *,
    rate: int = TRACK_RATE,
    settings: SegmenterSettings = SegmenterSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> list[Segment]:
    """Timed segments of the speech in `track`, in order; `progress(done, total)` after each."""
    audio = to_16k(track, rate)
    spans = split(audio, settings)
    segments = []
    for i, span in enumerate(spans):
        segments.append(_segment(span, transcriber.text(audio[span.start : span.end])))
        if progress is not None:
            progress(i + 1, len(spans))
    return segments


def _segment(span: Span, text: str) -> Segment:
    return Segment(round(span.start / RATE, 3), round(span.end / RATE, 3), text)
