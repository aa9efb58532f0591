"""The one-line status of the headless mode (`ppchat talk --no-tui`)."""

from __future__ import annotations

import collections

from ppchat.engine.events import StepEvent
from ppchat.engine.latency_stats import LatencyStats


class StatusLine:
    """Folds step events into `t=12.3s p50=41ms p95=55ms max=80ms rtf=0.52 late=0 drop=0 | text…`."""

    def __init__(self, text_chars: int = 40):
        self.stats = LatencyStats()
        self.audio_time = 0.0
        self._text: collections.deque[str] = collections.deque(maxlen=text_chars)

    def add(self, ev: StepEvent) -> None:
        self.stats.add(ev)
        self.audio_time = ev.audio_time + 0.08
        if ev.text_piece:
            self._text.extend(ev.text_piece)

    def line(self) -> str:
        s = self.stats
        if not s.steps:
            return "waiting for audio…"
        p50, p95, mx, rtf = s.percentile(50), s.percentile(95), s.max(), s.real_time_factor()
        text = "".join(self._text).strip()
        return (f"t={self.audio_time:6.1f}s step={s.steps} p50={p50:.0f}ms p95={p95:.0f}ms max={mx:.0f}ms "
                f"rtf={rtf:.2f} late={s.late} drop={s.dropped_in} underrun={s.underruns} xrun={s.xruns}"
                + (f" | {text}" if text else ""))
