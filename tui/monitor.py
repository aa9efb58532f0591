"""`ppchat monitor`: attach read-only to a running ppchat through its monitor socket.

The TUI shows the same live picture as the console (levels, monologue, latency) and
reconnects by itself when the conversation restarts or ppchat is relaunched.
`--no-tui` prints one status line per second instead, for logs and scripts, and ends
when the server goes away.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from textual.app import ComposeResult
from textual.binding import Binding

from ppchat.constants import FRAME_SECONDS
from ppchat.engine import monitor_socket
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.errors import PPChatError
from ppchat.tui.console import HELP_BINDING, ConsoleApp, LivePump
from ppchat.tui.state import UiState
from ppchat.tui.status_line import StatusLine


class MonitorFeed:
    """Reads the socket in a thread and republishes what arrives on a local EventBus.

    With `reconnect`, a lost connection is retried every `retry_s` seconds; `connected`
    and `info` say where things stand.
    """

    def __init__(self, path: str | Path | None, *, reconnect: bool = True, retry_s: float = 1.0) -> None:
        self.path = path
        self.reconnect = reconnect
        self.retry_s = retry_s
        self.bus = EventBus()
        self.info: dict[str, Any] = {}
        self.connected = False
        # When `ppchat monitor` (no --socket) reconnects to another ppchat than the one it watched
        # (that one ended; the newest other one answers): the pid it watched before.
        self.switched_from: int | None = None
        self._closing = threading.Event()
        self._sock = None
        self._thread = threading.Thread(target=self._run, name="ppchat-monitor-client", daemon=True)

    def start(self) -> MonitorFeed:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(2)
            except OSError:
                pass
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        announced_failure = False
        while not self._closing.is_set():
            try:
                self._sock = monitor_socket.connect(self.path)
            except PPChatError as exc:
                if not announced_failure:
                    self.bus.publish(NoticeEvent("warning", f"{exc} (retrying)", time.time()))
                    announced_failure = True
                if not self.reconnect:
                    return
                self._closing.wait(self.retry_s)
                continue
            announced_failure = False
            self.connected = True
            try:
                for msg in monitor_socket.read_messages(self._sock):
                    if isinstance(msg, dict):
                        self._check_switch(self.info.get("pid"), msg.get("pid"))
                        self.info = msg
                    else:
                        self.bus.publish(msg)
            except OSError:
                pass
            finally:
                self.connected = False
                self._sock.close()
                self._sock = None
            if self._closing.is_set() or not self.reconnect:
                return
            self.bus.publish(NoticeEvent("warning", "ppchat went away; waiting for it to come back…", time.time()))
            self._closing.wait(self.retry_s)


    def _check_switch(self, before: Any, now: Any) -> None:
        if before is not None and now is not None and now != before:
            self.switched_from = before
            self.bus.publish(NoticeEvent("warning", f"now watching another ppchat, pid {now}: pid {before} ended", time.time()))


def attached_to(feed: MonitorFeed) -> tuple[str, str]:
    """(badge, text) naming the ppchat a monitor shows: ("", "pid 4242"), and after it switched to
    another one ("SWITCHED", "pid 4242 (pid 4100 ended)")."""
    pid = feed.info.get("pid")
    if pid is None:
        return "", ""
    if feed.switched_from is None:
        return "", f"pid {pid}"
    return "SWITCHED", f"pid {pid} (pid {feed.switched_from} ended)"


class MonitorApp(LivePump, ConsoleApp):
    """Read-only live view of a running ppchat."""

    TITLE = "ppchat monitor"
    BINDINGS = [Binding("q", "quit", "Quit"), HELP_BINDING]
    HELP_KEYS = [("q", "quit (the conversation goes on)"), ("tab, ↑↓ End", "scroll the monologue")]

    def __init__(self, feed: MonitorFeed, *, refresh_hz: float = 12.0) -> None:
        super().__init__()
        self.feed = feed
        self.refresh_hz = refresh_hz
        self._subscription = feed.bus.subscribe(maxlen=1024, name="monitor-tui")

    def compose(self) -> ComposeResult:
        yield from self.compose_live()

    def on_mount(self) -> None:
        self.live.latency.window_label = "attach"  # what this monitor saw, not the session
        self.start_pump(self._subscription)
        self.pump()

    def select_events(self, events: list) -> list:
        last = self.live.last_step
        if last is not None and any(isinstance(e, StepEvent) and e.step < last.step for e in events):
            self.live.reset()  # the conversation restarted
        return events

    def after_batch(self, events: list) -> None:
        latency = self.live.latency
        session = self.feed.info.get("session_stats")
        if session != latency.session_stats:
            latency.session_stats = session
            latency.refresh()
        last = self.live.last_step
        info = dict(self.feed.info)
        muted = bool(info.get("muted")) and self.feed.connected
        badge, attached = attached_to(self.feed)
        self.status_bar.set(
            source_badge=badge,
            source=attached,
            state=UiState.MONITOR if self.feed.connected else UiState.DISCONNECTED,
            playback=not self.feed.connected,  # no "● rec" for a recording we can no longer see
            info=info,
            elapsed=last.audio_time + FRAME_SECONDS if last else 0.0,
            muted=muted,
            half_duplex=bool(info.get("half_duplex")) and self.feed.connected,
        )
        if self.live.wave_in.badge != ("MUTED" if muted else ""):
            self.live.wave_in.badge = "MUTED" if muted else ""
            self.live.wave_in.refresh()

    def on_unmount(self) -> None:
        self._subscription.close()


def print_status_lines(path: str | Path | None, out: TextIO = sys.stdout, interval_s: float = 1.0) -> int:
    """`--no-tui`: print a status line every `interval_s` while events flow; returns when the server closes."""
    sock = monitor_socket.connect(path)
    status = StatusLine()
    next_print = time.monotonic() + interval_s
    attached = None
    for msg in monitor_socket.read_messages(sock):
        if isinstance(msg, dict):
            # Info comes on connect and whenever it changes (the session's figures change
            # every second): say who we are attached to once, and again only if that changes.
            badge = " [DEMO]" if msg.get("is_demo") else ""
            about = f"{msg.get('model', '?')}{badge} voice {msg.get('voice', '?')} pid {msg.get('pid', '?')}"
            if about != attached:
                print(f"attached to {about}", file=out, flush=True)
                attached = about
        elif isinstance(msg, NoticeEvent):
            print(f"{msg.level}: {msg.message}", file=out, flush=True)
        elif isinstance(msg, StepEvent):
            status.add(msg)
            for line in status.finished_turns():
                print(line, file=out, flush=True)
        if status.last is not None and time.monotonic() >= next_print:
            next_print = time.monotonic() + interval_s
            print(status.line(), file=out, flush=True)
    for line in status.finished_turns(final=True):
        print(line, file=out, flush=True)
    print("ppchat closed the monitor connection", file=out, flush=True)
    return 0


def run_monitor(path: str | Path | None = None, *, tui: bool = True) -> int:
    """Entry point of `ppchat monitor`."""
    if not tui:
        return print_status_lines(path)
    if path is None and monitor_socket.find_server_socket() is None:
        raise PPChatError(f"no running ppchat found in {monitor_socket.runtime_dir()}: start `ppchat talk` first, or pass --socket PATH")
    feed = MonitorFeed(path).start()
    try:
        MonitorApp(feed).run()
    finally:
        feed.close()
    return 0
