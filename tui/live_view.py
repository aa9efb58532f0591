"""The live picture shared by the console, the replay screen and the monitor.

Events are applied in batches by a timer (10-15 Hz), never one redraw per event:
`LiveView.apply(events)` feeds every widget and then refreshes each one once.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from ppchat.asr.captions import CaptionEvent
from ppchat.constants import FRAME_MS
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.tui.widgets.captions import Captions
from ppchat.tui.widgets.latency import LatencyPanel
from ppchat.tui.widgets.monologue import Monologue
from ppchat.tui.widgets.waveform import FrameShape, Waveform


def frame_shape(pcm, envelope, peak: float, rms: float, filled: bool, marked: bool) -> FrameShape:
    """What a step tells about one track: its samples (live, replay), else the monitor's
    10 ms peak envelope, else only its peak."""
    if pcm is not None and len(pcm):
        return FrameShape.from_pcm(pcm, rms=rms, filled=filled, marked=marked)
    if envelope:
        return FrameShape.from_peaks(envelope, rms=rms, filled=filled, marked=marked)
    return FrameShape.from_level(peak, rms=rms, filled=filled, marked=marked)


class LiveView(Vertical):
    """Input and output waveforms, the inner monologue and the latency panel."""

    DEFAULT_CSS = """
    LiveView { height: 1fr; }
    LiveView > Waveform { height: 3; margin: 0 1; }
    LiveView #wave-out { margin: 0 1 1 1; }
    LiveView > #live-body { height: 1fr; width: 100%; }
    LiveView #talk { width: 1fr; border-right: tall $panel; }
    LiveView #monologue { width: 1fr; }
    LiveView #latency { width: 36; }
    """

    def __init__(self, *, budget_ms: float = FRAME_MS, turn_gap_steps: int = 20, id: str | None = None) -> None:
        super().__init__(id=id)
        self.last_step: StepEvent | None = None
        # Held by reference, not queried: a redraw tick that runs while the app is being taken
        # down finds them still there (a query then failed on '#latency' once in a while).
        self.wave_in = Waveform("mic", id="wave-in")
        self.wave_out = Waveform("agent", id="wave-out")
        self.monologue = Monologue(turn_gap_steps=turn_gap_steps, id="monologue")
        self.captions = Captions(id="captions")
        self.latency = LatencyPanel(budget_ms, id="latency")

    def compose(self) -> ComposeResult:
        yield self.wave_in
        yield self.wave_out
        with Horizontal(id="live-body"):
            with Vertical(id="talk"):
                yield self.monologue
                yield self.captions
            yield self.latency

    def apply(self, events: Iterable[object]) -> list[NoticeEvent]:
        """Feed a batch of events to the widgets and redraw once; returns the notices in it."""
        notices: list[NoticeEvent] = []
        wave_in, wave_out, monologue, latency = self.wave_in, self.wave_out, self.monologue, self.latency
        steps = 0
        for ev in events:
            if isinstance(ev, StepEvent):
                filled = ev.filled or ""
                user_filled, agent_filled = filled in ("user", "both"), filled in ("agent", "both")
                wave_in.push(frame_shape(ev.user_pcm, getattr(ev, "env_in", None), ev.in_peak, ev.in_rms, user_filled, ev.marked))
                wave_out.push(frame_shape(ev.agent_pcm, getattr(ev, "env_out", None), ev.out_peak, ev.out_rms, agent_filled, ev.marked))
                monologue.add(ev)
                latency.add(ev)
                self.last_step = ev
                steps += 1
            elif isinstance(ev, NoticeEvent):
                notices.append(ev)
            elif isinstance(ev, CaptionEvent):
                (self.captions.final if ev.kind == "final" else self.captions.partial)(ev.start, ev.text)
        if steps:
            wave_in.refresh()
            wave_out.refresh()
            latency.refresh()
            monologue.flush()
        return notices

    def reset(self) -> None:
        """Forget everything shown (a new conversation or a seek in a replay)."""
        self.wave_in.clear()
        self.wave_out.clear()
        self.monologue.clear()
        self.captions.clear()
        self.latency.reset()
        self.last_step = None
