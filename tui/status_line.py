"""The one-line status printed by `ppchat talk --no-tui` and `ppchat monitor --no-tui`."""

from __future__ import annotations

from ppchat.engine.events import StepEvent
from ppchat.engine.transcript import format_clock
from ppchat.tui.latency_stats import LatencyStats
from ppchat.tui.levels import envelope_bar, level_db


class StatusLine:
    """Folds step events into `01:02.3 step 778  in -23dB ▃▅  out -18dB ▆▆  ms p50 41.0 p95 55.0 …`."""

    def __init__(self, text_chars: int = 40):
        self.stats = LatencyStats()
        self.last: StepEvent | None = None
        self._text = ""
        self._text_chars = text_chars

    def add(self, ev: StepEvent) -> None:
        self.stats.add(ev)
        self.last = ev
        if ev.text_piece:
            self._text = (self._text + ev.text_piece)[-5 * self._text_chars:]

    def line(self) -> str:
        s, last = self.stats, self.last
        if last is None:
            return "waiting for audio…"
        # Monitor steps carry each frame's 10 ms peaks; the engine's own events do not.
        env_in, env_out = getattr(last, "env_in", []), getattr(last, "env_out", [])
        text = self._text.strip()[-self._text_chars:]
        return (
            f"{format_clock(last.audio_time)} step {last.step}"
            f"  in {level_db(last.in_peak):4.0f}dB {envelope_bar(env_in)}"
            f"  out {level_db(last.out_peak):4.0f}dB {envelope_bar(env_out)}"
            f"  ms p50 {s.percentile(50):.1f} p95 {s.percentile(95):.1f} max {s.max():.1f}"
            f"  rtf {s.real_time_factor():.2f}"
            f"  late {s.late} drop {s.dropped_in} under {s.underruns} xrun {s.xruns}"
            + (f"  | {text}" if text else "")
        )
