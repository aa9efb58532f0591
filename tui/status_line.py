"""The status lines of `ppchat talk --no-tui` and `ppchat monitor --no-tui`.

One line a second in fixed columns under a header printed once, at most 100
characters, so that a log reads as a table:

        time   step in dB mic      out dB agent      p50   p95    max   rtf late drop undr xrun
     00:12.3    153   -23 ▃▅▃▅▃▅▃▅    -18 ▆▆▆▆▆▆▆▆  41.0  55.0   71.9  0.52    2    0    1    0

The agent's words are not squeezed into that line: each turn is printed on lines of
its own (`agent 00:03.2  Hello there…`) once it ends.
"""

from __future__ import annotations

import textwrap

from ppchat.engine.events import StepEvent
from ppchat.engine.monitor_socket import level_envelope
from ppchat.engine.transcript import Transcript, format_clock
from ppchat.tui.latency_stats import LatencyStats
from ppchat.tui.levels import envelope_bar, level_db

MAX_WIDTH = 100
ENVELOPE = 8  # characters of each track's 10 ms envelope
HEADER = (
    f"{'time':>10} {'step':>6} {'in dB':>5} {'mic':<{ENVELOPE}} {'out dB':>6} {'agent':<{ENVELOPE}} "
    f"{'p50':>5} {'p95':>5} {'max':>6} {'rtf':>5} {'late':>4} {'drop':>4} {'undr':>4} {'xrun':>4}"
)
WAITING = "waiting for audio…"


def _ms(value: float | None, width: int) -> str:
    if value is None:
        return f"{'–':>{width}}"
    return f"{value:>{width}.1f}" if value < 10 ** (width - 2) else f"{value:>{width}.0f}"


class StatusLine:
    """Folds step events into fixed-column status lines and the agent's finished turns."""

    def __init__(self) -> None:
        self.stats = LatencyStats()
        self.last: StepEvent | None = None
        self.transcript = Transcript()
        self._printed_until = -1.0  # start time of the last turn printed (the transcript drops old turns)
        self._header_printed = False

    def add(self, ev: StepEvent) -> None:
        self.stats.add(ev)
        self.last = ev
        self.transcript.add(ev)

    def line(self) -> str:
        """The current status line (the header before the first one)."""
        s, last = self.stats, self.last
        if last is None:
            return WAITING
        # Monitor steps carry each frame's 10 ms peaks; the engine's own carry the audio.
        env_in = getattr(last, "env_in", None) or (level_envelope(last.user_pcm, ENVELOPE) if last.user_pcm is not None else [])
        env_out = getattr(last, "env_out", None) or (level_envelope(last.agent_pcm, ENVELOPE) if last.agent_pcm is not None else [])
        row = (
            f"{format_clock(last.audio_time):>10} {last.step:>6} "
            f"{level_db(last.in_peak):>5.0f} {envelope_bar(env_in):<{ENVELOPE}.{ENVELOPE}} "
            f"{level_db(last.out_peak):>6.0f} {envelope_bar(env_out):<{ENVELOPE}.{ENVELOPE}} "
            f"{_ms(s.percentile(50), 5)} {_ms(s.percentile(95), 5)} {_ms(s.max(), 6)} "
            f"{s.real_time_factor() or 0.0:>5.2f} {s.late:>4} {s.dropped_in:>4} {s.underruns:>4} {s.xruns:>4}"
        )
        if not self._header_printed:
            self._header_printed = True
            return HEADER + "\n" + row
        return row

    def finished_turns(self, final: bool = False) -> list[str]:
        """The agent's turns that ended since the last call, each as lines of at most 100
        characters (with `final`, the open turn too)."""
        entries = [e for e in self.transcript.entries if e.kind == "turn" and e.start > self._printed_until]
        if entries and self.transcript.speaking and not final and entries[-1] is self.transcript.entries[-1]:
            entries.pop()  # still being spoken
        lines: list[str] = []
        for entry in entries:
            head = f"agent {format_clock(entry.start)}  "
            lines += textwrap.wrap(entry.text.strip(), MAX_WIDTH, initial_indent=head, subsequent_indent=" " * len(head))
            self._printed_until = entry.start
        return lines
