"""Replay a recorded session in the console's live view: paced like the recording, with
pause, seek and speed controls.

`ReplayScreen` can be pushed from the console's session browser; `run_replay(session)`
is the entry point of `ppchat replay`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from ppchat.engine.events import EventBus
from ppchat.sessions.replay import play
from ppchat.sessions.schema import FRAME_SECONDS
from ppchat.sessions.store import Session, load_session
from ppchat.tui.live_view import LiveView
from ppchat.tui.notices import notify_event
from ppchat.tui.widgets.monologue import clock
from ppchat.tui.widgets.statusbar import StatusBar

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
        "prompt_name": (prompt[:24] + "…") if len(prompt) > 25 else (prompt or "–"),
        "session_dir": str(session.path),
    }


class ReplayScreen(Screen):
    """Plays `session` into a LiveView from a worker thread; the redraw timer drains it."""

    BINDINGS = [
        Binding("space", "toggle_pause", "Pause/play"),
        # priority: the focused transcript would otherwise take the arrows for scrolling.
        Binding("left", "seek(-1)", "-5 s", key_display="←", priority=True),
        Binding("right", "seek(1)", "+5 s", key_display="→", priority=True),
        Binding("minus", "speed(-1)", "Slower"),
        Binding("plus,equals_sign", "speed(1)", "Faster"),
        Binding("home", "restart", "Start"),
        Binding("escape,q", "close", "Back"),
    ]

    def __init__(self, session: Session, *, speed: float = 1.0, refresh_hz: float = 12.0) -> None:
        super().__init__()
        self.session = session
        self.refresh_hz = refresh_hz
        self.duration = session.frames * FRAME_SECONDS
        self.speed = speed
        self.position = 0.0  # audio time of the next event to show
        self.playing = False
        self.ended = False
        self._bus = EventBus()
        self._subscription = self._bus.subscribe(maxlen=4096, name="replay")
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        # The user's words (`ppchat transcribe`) appear under the monologue when each utterance ends, as live captions would.
        self._user_lines = [line for line in session.user_lines if line.text.strip()]
        self._user_shown = 0

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield LiveView(id="live")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        for warning in self.session.warnings:
            self.notify(warning, severity="warning", timeout=10)
        self.set_interval(1.0 / self.refresh_hz, self._pump)
        self._play_from(0.0)

    def on_unmount(self) -> None:
        self._halt_player()
        self._subscription.close()

    # ---- playback -----------------------------------------------------------------

    def _play_from(self, start: float, *, autoplay: bool = True) -> None:
        """Reset the view to `start` (history before it drawn at once) and play on from there."""
        self._halt_player()
        self._subscription.drain()
        # Snap to the frame boundary `play` starts from, so the view and position agree.
        first = math.ceil(min(max(0.0, start), self.duration) / FRAME_SECONDS - 1e-9)
        start = first * FRAME_SECONDS
        live = self.query_one(LiveView)
        live.reset()
        live.apply([ev for ev in self.session.steps if first - PRIME_STEPS <= ev.step < first])
        self.position, self.ended = start, False
        self._user_shown = 0
        self._show_user_lines()
        if autoplay:
            self._start_player(start)
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

    def _pump(self) -> None:
        events = self._subscription.drain()
        if any(e is _END for e in events):
            events = [e for e in events if e is not _END]
            self.playing, self.ended = False, True
        live = self.query_one(LiveView)
        for notice in live.apply(events):
            notify_event(self.app, notice)
        if live.last_step is not None:
            self.position = live.last_step.audio_time + FRAME_SECONDS
        self._show_user_lines()
        if events or self.ended:
            self._update_status()

    def _show_user_lines(self) -> None:
        lines, captions = self._user_lines, self.query_one(LiveView).captions
        while self._user_shown < len(lines) and lines[self._user_shown].end <= self.position + 1e-9:
            line = lines[self._user_shown]
            captions.final(line.start, line.text)
            self._user_shown += 1

    def _update_status(self) -> None:
        state = "replay" if self.playing else ("stopped" if self.ended else "paused")
        self.query_one(StatusBar).set(
            state=state,
            playback=True,
            info=session_status_info(self.session),
            elapsed=self.position,
            extra=f"{self.speed:g}× of {clock(self.duration)}" + (" · end" if self.ended else ""),
        )

    # ---- actions ----------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        if self.playing:
            self._halt_player()
            self._update_status()
        else:
            self._play_from(0.0 if self.ended else self.position)

    def action_seek(self, direction: int) -> None:
        self._play_from(self.position + direction * SEEK_S, autoplay=self.playing)

    def action_speed(self, direction: int) -> None:
        index = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - self.speed))
        self.speed = SPEEDS[min(len(SPEEDS) - 1, max(0, index + direction))]
        if self.playing:
            self._play_from(self.position)
        else:
            self._update_status()

    def action_restart(self) -> None:
        self._play_from(0.0)

    def action_close(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.exit()


_END = object()  # published once the recording has been played to the end


class ReplayApp(App):
    """`ppchat replay`: the replay screen on its own."""

    TITLE = "ppchat replay"
    CSS_PATH = "app.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall"), (48, "-very-tall")]

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
