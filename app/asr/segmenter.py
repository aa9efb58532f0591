"""Split a 16 kHz speech track into utterances by loudness, streaming.

Qwen3-ASR transcribes a clip as a whole and gives no timing inside it, so the timing of
the user's words comes from here: each utterance is a run of loud 20 ms windows, closed
by `hang_s` of quiet (or cut at `max_s`), padded a little on both sides so that soft word
onsets and endings reach the model. The same code serves `ppchat transcribe` (the whole
track at once) and the live captions (frame by frame), so both place words alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

RATE = 16000
WINDOW = RATE // 50  # 20 ms


class Span(NamedTuple):
    start: int  # first sample, in samples from the start of the track
    end: int  # one past the last sample


@dataclass(frozen=True)
class SegmenterSettings:
    threshold_db: float = -45.0  # a window is speech when its RMS is above this (dBFS)
    hang_s: float = 0.6  # this much quiet ends an utterance
    pad_s: float = 0.2  # kept before the first and after the last loud window
    min_voiced_s: float = 0.12  # shorter bursts (clicks, bumps) are not utterances
    max_s: float = 20.0  # longer speech is cut here (the model reads ~30 s at most)


class Segmenter:
    """Feed samples in any block size; closed utterances come back as `Span`s."""

    def __init__(self, settings: SegmenterSettings = SegmenterSettings()):
        self.settings = settings
        self._threshold = (10 ** (settings.threshold_db / 20)) ** 2  # mean square
        self._hang = round(settings.hang_s * RATE)
        self._pad = round(settings.pad_s * RATE)
        self._min_voiced = round(settings.min_voiced_s * RATE)
        self._max = round(settings.max_s * RATE)
        self._rest = np.zeros(0, dtype=np.float32)
        self._pos = 0  # samples consumed into whole windows
        self._floor = 0  # no new utterance may start before this (the previous one's end)
        self._first: int | None = None  # first loud sample of the open utterance
        self._last_loud_end = 0
        self._voiced = 0

    @property
    def position(self) -> int:
        """Samples analysed so far."""
        return self._pos

    @property
    def open_start(self) -> int | None:
        """Where the utterance being heard now starts (padded), or None in silence."""
        return None if self._first is None else max(self._floor, self._first - self._pad)

    def feed(self, samples: np.ndarray) -> list[Span]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        data = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        whole = len(data) // WINDOW * WINDOW
        self._rest = data[whole:].copy()
        if not whole:
            return []
        loud = (data[:whole].reshape(-1, WINDOW).astype(np.float64) ** 2).mean(axis=1) > self._threshold
        spans = []
        for is_loud in loud:
            lo = self._pos
            self._pos += WINDOW
            if is_loud:
                if self._first is None:
                    self._first, self._voiced = lo, 0
                self._voiced += WINDOW
                self._last_loud_end = self._pos
            if self._first is None:
                continue
            if self._pos - self._last_loud_end >= self._hang or self._pos - self.open_start >= self._max:
                spans += self._close(min(self._last_loud_end + self._pad, self._pos))
                if is_loud:  # speech goes on: the next utterance starts right here
                    self._first, self._voiced = self._pos, 0
        return spans

    def flush(self) -> list[Span]:
        """End of the track: close what is open."""
        if len(self._rest):
            self._pos += len(self._rest)
            self._rest = np.zeros(0, dtype=np.float32)
        if self._first is None:
            return []
        return self._close(min(self._last_loud_end + self._pad, self._pos))

    def _close(self, end: int) -> list[Span]:
        start = self.open_start
        voiced, self._first = self._voiced, None
        self._floor = end
        return [Span(start, end)] if voiced >= self._min_voiced else []


def split(track16k: np.ndarray, settings: SegmenterSettings = SegmenterSettings()) -> list[Span]:
    """The utterances of a whole track."""
    seg = Segmenter(settings)
    return seg.feed(track16k) + seg.flush()
