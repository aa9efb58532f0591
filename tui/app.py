"""The conversation console: `PPChatApp(conversation)` drives a `Conversation` controller.

The engine publishes StepEvents from its own thread at 12.5 Hz. The console never
handles them one by one: a timer (12 Hz by default) drains its own bus subscription
and applies the batch to the widgets, each of which then redraws once. Calls into
the controller that may block (start = prefill, stop = finalise the recording,
restart) run in worker threads so the screen stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from ppchat import logfile
from ppchat.constants import FRAME_SECONDS
from ppchat.engine.events import EventBus, NoticeEvent, ProgressEvent, StepEvent
from ppchat.errors import ConditioningCancelled, PPChatError
from ppchat.tui.console import HELP_BINDING, ConsoleApp, LivePump
from ppchat.tui.lifeline import Lifeline
from ppchat.tui.pickers import PromptPicker, VoicePicker
from ppchat.tui.state import UiState
from ppchat.tui.stderr_guard import StderrToLog

log = logging.getLogger(__name__)

SHORT_TASKS = {"voice prompt": "voice", "prompt prefill": "prompt"}  # what the status bar calls them
CONVERSATION_ACTIONS = {"toggle_run", "toggle_mute", "toggle_half_duplex", "toggle_aec", "mark", "pick_voice", "pick_prompt",
                        "sessions"}


class ConversationLike(Protocol):
    """What the console needs from `ppchat.conversation.Conversation`."""

    bus: EventBus
    running: bool

    @property
    def info(self) -> dict[str, Any]: ...
    def start(self, voice: str, prompt: str) -> None: ...
    def stop(self) -> None: ...
    def restart(self, voice: str, prompt: str) -> None: ...
    def set_mute(self, on: bool) -> None: ...
    def set_half_duplex(self, on: bool) -> None: ...
    def set_aec(self, on: bool) -> None: ...
    def mark(self) -> None: ...
    def voices(self) -> list[str]: ...
    def prompts(self) -> dict[str, str]: ...
    def check_voice(self, voice: str) -> None: ...


class PPChatApp(LivePump, ConsoleApp):
    """The live conversation console.

    `conversation` is the controller (see `ConversationLike`); `voice` / `prompt`
    default to what the controller reports; `autostart` starts talking at once;
    `refresh_hz` is the redraw rate; `sessions_root` is where the session browser
    looks (default: the folder holding the current session); `duration` (seconds of
    conversation, counted from the first live frame) quits by itself, saving.
    """

    TITLE = "ppchat"
    # Most important first: a narrow footer cuts from the right.
    BINDINGS = [
        Binding("space", "toggle_run", "Start/stop"),
        Binding("q", "quit", "Quit"),
        HELP_BINDING,
        Binding("v", "pick_voice", "Voice"),
        Binding("p", "pick_prompt", "Prompt"),
        Binding("s", "sessions", "Sessions"),
        Binding("m", "toggle_mute", "Mute"),
        Binding("h", "toggle_half_duplex", "Half-dup"),
        Binding("k", "mark", "Mark"),
        Binding("a", "toggle_aec", "AEC"),
    ]
    HELP_KEYS = [
        ("space", "start talking, or stop (the recording is saved)"),
        ("q, ctrl+c", "quit (always saves)"),
        ("v", "voice picker: a preset, or an audio file (restarts the conversation)"),
        ("p", "role-prompt picker: a preset, or your own text (restarts)"),
        ("s", "recorded sessions; enter replays one"),
        ("m", "mute the microphone (the agent hears silence)"),
        ("h", "half-duplex gate: your mic is muted while the agent speaks"),
        ("a", "echo cancellation on/off (beside the mic: AEC and the echo removed, dB)"),
        ("k", "mark this moment in the recording"),
        ("tab, ↑↓ PgUp PgDn Home End", "move into the monologue and scroll it"),
    ]

    def __init__(
        self,
        conversation: ConversationLike,
        *,
        voice: str | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        autostart: bool = True,
        refresh_hz: float = 12.0,
        sessions_root: str | Path | None = None,
        duration: float | None = None,
    ) -> None:
        super().__init__()
        self.conversation = conversation
        info = conversation.info
        self.voice = voice or info.get("voice") or next(iter(conversation.voices()), "")
        self.prompt = prompt if prompt is not None else (info.get("prompt") or "")
        self.prompt_name = prompt_name if prompt is not None else info.get("prompt_name")
        self.autostart = autostart
        self.refresh_hz = refresh_hz
        self.sessions_root = Path(sessions_root) if sessions_root else None
        self.duration = duration
        self.state = UiState.STOPPED
        self.muted = False
        self.half_duplex = False
        self.aec = True
        self._subscription = conversation.bus.subscribe(maxlen=1024, name="tui")
        self._ticks = 0
        self._stopped_for_exit = False
        self._stop_lock = threading.Lock()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._begun_at = 0.0  # when the current start/restart was asked for (time.time())
        self._progress = ""  # how far conditioning has got, shown beside PREFILL

    # ---- layout and the redraw loop -------------------------------------------------

    def compose(self) -> ComposeResult:
        yield from self.compose_live()

    def on_mount(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._update_status()
        self.start_pump(self._subscription)
        if self.autostart:
            self.action_toggle_run()

    def select_events(self, events: list) -> list:
        self._ticks += 1
        return self._this_run_only(events) if self.state is UiState.STARTING else events

    def after_batch(self, events: list) -> None:
        progress = next((ev for ev in reversed(events) if isinstance(ev, ProgressEvent)), None)
        if progress is not None and self.state is UiState.STARTING:
            # Short: beside ◌ PREFILL at 80 columns the DEMO badge and the voice must still fit.
            # (Shown by the status update below, which every batch with events gets.)
            self._progress = progress.describe(unit="", task=SHORT_TASKS.get(progress.task, progress.task))
        if events and self.state is UiState.STARTING and self.live.last_step is not None and self.conversation.running:
            self._set_state(UiState.LIVE)
        if events or self._ticks % max(1, round(self.refresh_hz)) == 0:
            if self.state is UiState.LIVE and not self.conversation.running:
                self.state = UiState.STOPPED  # the engine ended by itself (device lost, error)
            self._update_status()
            self._show_aec()
        last = self.live.last_step
        if self.duration is not None and self.state is UiState.LIVE and last and last.audio_time + FRAME_SECONDS >= self.duration - 1e-6:
            self.duration = None
            self.run_worker(self.action_quit(), name="duration")

    def _this_run_only(self, events: list) -> list:
        """Drop the steps of the run being replaced that arrive while the new one starts.

        Until the controller reports a start time later than the user's request, every
        step is the old run's; after that, steps from before that start time are.
        """
        started = self.conversation.info.get("started_at")
        if started is None or started < self._begun_at:
            return [ev for ev in events if not isinstance(ev, StepEvent)]
        return [ev for ev in events if not isinstance(ev, StepEvent) or ev.wall_time >= started]

    def _update_status(self) -> None:
        info = dict(self.conversation.info)
        # Show the choice that the next start will use, even before it is applied.
        info.update(voice=self.voice, prompt_name=self.prompt_name or "custom")
        last = self.live.last_step
        self.status_bar.set(
            state=self.state, info=info, muted=self.muted, half_duplex=self.half_duplex,
            elapsed=last.audio_time + FRAME_SECONDS if last else 0.0,
            extra=self._progress if self.state is UiState.STARTING else "",
        )

    def _set_state(self, state: UiState) -> None:
        self.state = state
        self._update_status()

    # ---- controller calls (worker threads: prefill and finalising can take seconds) --

    def _run_in_thread(self, work, name: str) -> None:
        def guarded() -> None:
            try:
                work()
            except ConditioningCancelled:
                pass  # a stop, quit or restart asked for it, and goes on with its own work; its notice says so
            except PPChatError as exc:
                self.call_from_thread(self._failed, str(exc))
            except Exception as exc:  # an engine bug must not take the console (and the recording) down
                log.exception("%s failed", name)
                self.call_from_thread(self._failed, f"{name} failed: internal error ({type(exc).__name__}: {exc}){logfile.see_log()}")

        self.run_worker(guarded, name=name, thread=True, group="conversation")

    def _failed(self, message: str) -> None:
        self.show_notice(NoticeEvent("error", message, time.time()))
        self._set_state(UiState.LIVE if self.conversation.running else UiState.STOPPED)

    def _start(self) -> None:
        self._begin(lambda: self.conversation.start(self.voice, self.prompt), "start")

    def _restart(self) -> None:
        self._begin(lambda: self.conversation.restart(self.voice, self.prompt), "restart")

    def _begin(self, call, name: str) -> None:
        """Start or restart: a clean view, then the blocking call, then the mic switches again."""
        self._subscription.drain()  # what the previous run left queued is not this run's
        self._begun_at = time.time()
        self._progress = ""
        self.live.reset()
        self._set_state(UiState.STARTING)

        def work() -> None:
            call()
            # A new run starts unmuted and ungated; keep what the screen says.
            self.conversation.set_mute(self.muted)
            self.conversation.set_half_duplex(self.half_duplex)
            self.conversation.set_aec(self.aec)

        self._run_in_thread(work, name)

    def _stop(self) -> None:
        self._set_state(UiState.STOPPING)

        def stop() -> None:
            self.conversation.stop()
            self.call_from_thread(self._set_state, UiState.STOPPED)

        self._run_in_thread(stop, "stop")

    # ---- actions ----------------------------------------------------------------------

    def action_toggle_run(self) -> None:
        """Space: start talking, or stop (which saves the recording)."""
        if self.state in (UiState.LIVE, UiState.STARTING):
            self._stop()
        elif self.state is UiState.STOPPED:
            self._start()

    def action_toggle_mute(self) -> None:
        self.muted = not self.muted
        self.conversation.set_mute(self.muted)
        self.live.wave_in.badge = "MUTED" if self.muted else ""
        self.live.wave_in.refresh()
        self._update_status()

    def action_toggle_aec(self) -> None:
        if self.conversation.info.get("aec", "unavailable") == "unavailable":
            self.notify("Echo cancellation is not available (--aec off, or see the notices); h gates the mic instead.",
                        severity="warning", timeout=4)
            return
        self.aec = not self.aec
        self.conversation.set_aec(self.aec)
        self._show_aec()
        self.notify("Echo cancellation on." if self.aec else "Echo cancellation off: the agent hears your raw microphone.",
                    timeout=3)

    def _show_aec(self) -> None:
        """Beside the mic track: AEC and the live echo removed (dB), 'AECoff', or nothing."""
        state = self.conversation.info.get("aec", "unavailable")
        last = self.live.last_step
        erle = last.erle_db if last is not None else None
        text = "" if state == "unavailable" else "AECoff" if state == "off" else "AEC --" if erle is None else f"AEC{erle:3.0f}"
        if text != self.live.wave_in.note:
            self.live.wave_in.note = text
            self.live.wave_in.refresh()

    def action_toggle_half_duplex(self) -> None:
        self.half_duplex = not self.half_duplex
        self.conversation.set_half_duplex(self.half_duplex)
        self._update_status()
        gate = "Half-duplex gate on: your mic is gated while the agent speaks." if self.half_duplex else "Half-duplex gate off."
        self.notify(gate, timeout=3)

    def action_mark(self) -> None:
        if not self.conversation.running:
            self.notify("Nothing to mark: the conversation is not running.", severity="warning", timeout=3)
            return
        self.conversation.mark()
        self.notify("Marked this moment in the recording.", timeout=2)

    def action_pick_voice(self) -> None:
        check = getattr(self.conversation, "check_voice", None)
        self.push_screen(VoicePicker(self.conversation.voices(), self.voice, check), self._voice_chosen)

    def action_pick_prompt(self) -> None:
        self.push_screen(PromptPicker(self.conversation.prompts(), self.prompt, self.prompt_name), self._prompt_chosen)

    def action_sessions(self) -> None:
        from ppchat.tui.session_browser import SessionBrowser

        self.push_screen(SessionBrowser(self._sessions_root()))

    async def action_quit(self, return_code: int = 0) -> None:
        """q: stop (which saves the recording), then leave."""
        self._set_state(UiState.STOPPING)
        await asyncio.to_thread(self.stop_for_exit)
        self.exit(return_code=return_code)

    async def action_interrupt(self) -> None:
        """Ctrl-C: as q, with the exit status of an interrupt (130)."""
        await self.action_quit(130)

    def stop_for_exit(self) -> None:
        """Stop the conversation (saving it) once, from any thread."""
        with self._stop_lock:
            if not self._stopped_for_exit:
                self._stopped_for_exit = True
                self.conversation.stop()

    def exit_from_thread(self) -> None:
        """Ask the app to exit from another thread, without waiting for it."""
        loop = self._event_loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.exit)

    def on_unmount(self) -> None:
        # Any way out (ctrl+q, an exception) still saves the session.
        self.stop_for_exit()
        self._subscription.close()

    # ---- picker results ------------------------------------------------------------------

    def _voice_chosen(self, voice: str | None) -> None:
        if voice is None or voice == self.voice:
            return
        self.voice = voice
        self._conditioning_changed(f"voice {voice}")

    def _prompt_chosen(self, choice: tuple[str, str] | None) -> None:
        if choice is None:
            return
        name, text = choice
        if text == self.prompt and name == self.prompt_name:
            return
        self.prompt_name, self.prompt = name, text
        self._conditioning_changed(f"prompt {name}")

    def _conditioning_changed(self, what: str) -> None:
        if self.state in (UiState.LIVE, UiState.STARTING):
            self.notify(f"Restarting with {what}…", timeout=3)
            self._restart()
        else:
            self.notify(f"{what.capitalize()} will be used when you start (space).", timeout=4)
            self._update_status()

    def _sessions_root(self) -> Path | None:
        if self.sessions_root:
            return self.sessions_root
        session = self.conversation.info.get("session_dir")
        return Path(session).parent if session else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Conversation keys act on the main screen only, not under a picker, the
        # session browser or a replay (which bind some of the same keys themselves).
        if action in CONVERSATION_ACTIONS and len(self.screen_stack) > 1:
            return False
        return True

    # ---- command palette -----------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Start / stop", "Start talking, or stop and save the recording (space)", self.action_toggle_run)
        yield SystemCommand("Voice…", "Pick the agent's voice; restarts the conversation (v)", self.action_pick_voice)
        yield SystemCommand("Prompt…", "Pick or edit the role prompt; restarts the conversation (p)", self.action_pick_prompt)
        yield SystemCommand("Sessions…", "Browse and replay recorded sessions (s)", self.action_sessions)
        yield SystemCommand("Mute microphone", "Toggle sending silence instead of your voice (m)", self.action_toggle_mute)
        yield SystemCommand("Half-duplex gate", "Toggle gating your mic while the agent speaks (h)", self.action_toggle_half_duplex)
        yield SystemCommand("Echo cancellation", "Toggle echo cancellation on the mic (a)", self.action_toggle_aec)
        yield SystemCommand("Mark", "Mark this moment in the recording (k)", self.action_mark)
        yield SystemCommand("Notices…", "Every message of this run, with its time (n)", self.action_notices)
        yield from super().get_system_commands(screen)


def run_app(
    conversation: ConversationLike,
    *,
    sessions_root: str | Path | None = None,
    autostart: bool = True,
    duration: float | None = None,
) -> int:
    """Entry point of `ppchat talk`: the console on this terminal until the user quits.

    The conversation is stopped (and its recording saved) on the way out, however the
    console ends: q, `duration`, SIGTERM, SIGHUP or a terminal that went away (see
    `Lifeline`). Closing the controller stays with the caller.
    """
    app = PPChatApp(conversation, autostart=autostart, sessions_root=sessions_root, duration=duration)
    # StderrToLog first: the Lifeline watches the terminal Textual is handed.
    with StderrToLog(), Lifeline(app.stop_for_exit, app.exit_from_thread, close=getattr(conversation, "close", None)) as lifeline:
        app.run()
    _say_where_it_was_saved(getattr(conversation, "last_session_dir", None))
    return lifeline.exit_code or app.return_code or 0


def _say_where_it_was_saved(session_dir: Path | None) -> None:
    """The screen that showed "● rec PATH" is gone: one line says where the recording is."""
    if session_dir is None:
        return
    try:
        print(f"ppchat: session saved in {session_dir}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the terminal has gone (a closed window)

