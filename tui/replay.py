"""Replay a recorded session in the console's live view: paced like the recording, with
pause, seek and speed controls.

`ReplayScreen` can be pushed from the console's session browser; `run_replay(session)`
is the entry point of `ppchat replay`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen

from ppchat.constants import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE
from ppchat.engine.events import EventBus
from ppchat.engine.transcript import format_clock
from ppchat.sessions.replay import play
from ppchat.sessions.store import Session, load_session
from ppchat.tui.console import HELP_BINDING, ConsoleApp, LivePump
from ppchat.tui.state import UiState

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SEEK_S = 5.0
PRIME_STEPS = 3000  # history drawn at once after a seek (4 minutes)


def session_status_info(session: Session) -> dict:
    """The status bar's view of a recorded session."""
    meta = session.info.meta
    prompt = " ".join(meta.role_prompt.split())
    return {
        "model": meta.model_id or "unknown model",
        "is_demo": "demo" in (meta.model_id or "").lower(),
        "quantization": meta.quantization,
        "input_device": meta.devices.get("input"),
        "output_device": meta.devices.get("output"),
        "voice": meta.voice,
        "prompt_name": prompt or "–",  # the status bar shortens it to what fits
        "session_dir": str(session.path),
    }


def seek_frame(frame: int, direction: int) -> int:
    """The frame a seek from `frame` lands on: the next (or previous) point of a 5 s grid.

    Seeking on a fixed grid of the recording's own time, not by "5 s from wherever the
    view is", keeps seeks from drifting: every grid point k x 5 s is the frame that
    holds it, whatever the path that led there.
    """
    grid = round(SEEK_S * SAMPLE_RATE)

    def grid_frame(k: int) -> int:
        return -(-k * grid // FRAME_SAMPLES)  # ceil: the first frame starting at or after k x 5 s

    k = frame * FRAME_SAMPLES // grid + 1
    if direction > 0:
        while grid_frame(k) <= frame:
            k += 1
        return grid_frame(k)
    while k > 0 and grid_frame(k) >= frame:
        k -= 1
    return grid_frame(k)


class ReplayScreen(LivePump, Screen):
    """Plays `session` into a LiveView from a worker thread; the redraw timer drains it."""

    BINDINGS = [
        Binding("space", "toggle_pause", "Pause/play"),
        Binding("escape,q", "close", "Back"),
        HELP_BINDING,
        # priority: the focused transcript would otherwise take the arrows for scrolling.
        Binding("left", "seek(-1)", "-5 s", key_display="←", priority=True),
        Binding("right", "seek(1)", "+5 s", key_display="→", priority=True),
        Binding("minus", "speed(-1)", "Slower"),
        Binding("plus,equals_sign", "speed(1)", "Faster"),
        Binding("home", "restart", "Start"),
    ]
    HELP_KEYS = [
        ("space", "pause / play (from the start again once it has ended)"),
        ("← →", "seek 5 s back / forward (to the 5 s marks of the recording)"),
        ("- +", "slower / faster: 0.25x to 8x"),
        ("home", "back to the start"),
        ("esc, q", "back to the sessions (or quit)"),
    ]

    def __init__(self, session: Session, *, speed: float = 1.0, refresh_hz: float = 12.0) -> None:
        super().__init__()
        self.session = session
        self.refresh_hz = refresh_hz
        self.frames = session.frames
        self.duration = session.frames * FRAME_SECONDS
        self.speed = speed
        self.frame = 0  # the next frame to show
        self.playing = False
        self.ended = False
        self._bus = EventBus()
        self._subscription = self._bus.subscribe(maxlen=4096, name="replay")
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        # The user's words (`ppchat transcribe`) appear under the monologue when each utterance ends, as live captions would.
        self._user_lines = [line for line in session.user_lines if line.text.strip()]
        self._user_shown = 0

    @property
    def position(self) -> float:
        """Audio time of the next frame to show, in seconds."""
        return self.frame * FRAME_SECONDS

    def compose(self) -> ComposeResult:
        yield from self.compose_live()

    def on_mount(self) -> None:
        for warning in self.session.warnings:
            self.notify(warning, severity="warning", timeout=10)
        self.start_pump(self._subscription)
        self._play_from(0)

    def on_unmount(self) -> None:
        self._halt_player()
        self._subscription.close()

    # ---- playback -----------------------------------------------------------------

    def _play_from(self, first: int, *, autoplay: bool = True) -> None:
        """Reset the view to frame `first` (history before it drawn at once) and play on from there."""
        self._halt_player()
        self._subscription.drain()
        first = min(max(0, first), self.frames)
        self.live.reset()
        self.live.apply([ev for ev in self.session.steps if first - PRIME_STEPS <= ev.step < first])
        self.frame, self.ended = first, False
        self._user_shown = 0
        self._show_user_lines()
        if autoplay:
            self._start_player(first * FRAME_SECONDS)
        self._update_status()

    def _start_player(self, start: float) -> None:
        self.playing = True
        halt = self._halt = threading.Event()

        def run() -> None:
            for event in play(self.session, speed=self.speed, start=start):
                if halt.is_set():
                    return
                self._bus.publish(event)
            if not halt.is_set():
                self._bus.publish(_END)

        self._thread = threading.Thread(target=run, name="ppchat-replay", daemon=True)
        self._thread.start()

    def _halt_player(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self.playing = False

    def select_events(self, events: list) -> list:
        if any(e is _END for e in events):
            events = [e for e in events if e is not _END]
            self.playing, self.ended = False, True
        return events

    def after_batch(self, events: list) -> None:
        if self.live.last_step is not None:
            self.frame = self.live.last_step.step + 1
        self._show_user_lines()
        if events or self.ended:
            self._update_status()

    def _show_user_lines(self) -> None:
        lines, captions = self._user_lines, self.live.captions
        while self._user_shown < len(lines) and lines[self._user_shown].end <= self.position + 1e-9:
            line = lines[self._user_shown]
            captions.final(line.start, line.text)
            self._user_shown += 1

    def _update_status(self) -> None:
        state = UiState.REPLAY if self.playing else (UiState.ENDED if self.ended else UiState.PAUSED)
        self.status_bar.set(
            state=state,
            playback=True,
            info=session_status_info(self.session),
            elapsed=self.position,
            extra=f"{self.speed:g}× of {format_clock(self.duration, tenths=False)}" + (" · end" if self.ended else ""),
        )

    # ---- actions ----------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        if self.playing:
            self._halt_player()
            self._update_status()
        else:
            self._play_from(0 if self.ended else self.frame)

    def action_seek(self, direction: int) -> None:
        self._play_from(seek_frame(self.frame, direction), autoplay=self.playing)

    def action_speed(self, direction: int) -> None:
        index = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - self.speed))
        self.speed = SPEEDS[min(len(SPEEDS) - 1, max(0, index + direction))]
        if self.playing:
            self._play_from(self.frame)
        else:
            self._update_status()

    def action_restart(self) -> None:
        self._play_from(0)

    def action_close(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.exit()


_END = object()  # published once the recording has been played to the end


class ReplayApp(ConsoleApp):
    """`ppchat replay`: the replay screen on its own."""

    TITLE = "ppchat replay"

    def __init__(self, session: Session, *, speed: float = 1.0) -> None:
        super().__init__()
        self.session = session
        self.speed = speed

    def get_default_screen(self) -> Screen:
        return ReplayScreen(self.session, speed=self.speed)


def run_replay(session: Session | str | Path, *, speed: float = 1.0) -> int:
    """Replay a session (a loaded `Session` or its folder) full-screen; returns the exit status."""
    if not isinstance(session, Session):
        session = load_session(Path(session))
    ReplayApp(session, speed=speed).run()
    return 0
