"""Ending a console cleanly when its terminal goes away or the process is told to stop.

SIGTERM, SIGHUP, and a terminal that hung up without a signal (under `nohup`, say:
then its reads return end-of-file and its ioctls fail) all lead to the same thing,
from a watchdog thread: `stop()` (which saves the recording), then a request to the
app to exit. The app's event loop may itself be stuck writing to the dead terminal
(Textual's writer thread dies on the first failed write and the loop then blocks on
its full queue), so when the app has not ended `grace_s` after the session was saved,
`close()` runs and the process exits on the spot.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable

WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
log = logging.getLogger(__name__)


def terminal_fd() -> int | None:
    """The terminal the console draws on: Textual writes to stderr; else stdout, stdin."""
    for stream in (sys.__stderr__, sys.__stdout__, sys.__stdin__):
        try:
            if stream is not None and stream.isatty():
                return stream.fileno()
        except (OSError, ValueError):
            continue
    return None


def terminal_hung_up(fd: int) -> bool:
    """True when `fd` is a terminal whose other side is gone (its ioctls fail with EIO)."""
    try:
        termios.tcgetattr(fd)
    except termios.error as exc:
        log.info("terminal fd %d: %s", fd, exc)
        return bool(exc.args) and exc.args[0] == errno.EIO  # anything else is not a hang-up
    except (OSError, ValueError):
        return False
    return False


class Lifeline:
    """Watches for SIGTERM/SIGHUP and a hung-up terminal while a console runs.

    `stop` must be safe to call from any thread and more than once; `request_exit`
    must not block (e.g. `loop.call_soon_threadsafe(app.exit)`); `close` releases
    what the process holds (the monitor socket) before a forced exit.
    """

    def __init__(
        self,
        stop: Callable[[], None],
        request_exit: Callable[[], None],
        *,
        close: Callable[[], None] | None = None,
        fd: int | None = None,
        poll_s: float = 0.25,
        grace_s: float = 1.0,
        hard_exit: Callable[[int], None] = os._exit,
    ) -> None:
        self._stop, self._request_exit, self._close = stop, request_exit, close
        self.fd = fd if fd is not None else terminal_fd()
        self.poll_s, self.grace_s = poll_s, grace_s
        self._hard_exit = hard_exit
        self.reason: str | None = None
        self.exit_code = 0  # 128 + the signal's number once one ended the console (129 for a hang-up)
        self._wake = threading.Event()
        self._done = threading.Event()
        self._previous: dict[int, object] = {}
        self._thread = threading.Thread(target=self._watch, name="ppchat-lifeline", daemon=True)

    def __enter__(self) -> Lifeline:
        if threading.current_thread() is threading.main_thread():
            for sig in WATCHED_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        """The app has ended by itself: stand down."""
        self._done.set()
        self._wake.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._thread.join(timeout=self.grace_s + 1.0)

    def _on_signal(self, signum: int, frame) -> None:
        # Only set flags here: the work happens on the watchdog thread.
        if self.reason is None:
            self.reason, self.exit_code = signal.Signals(signum).name, 128 + signum
        self._wake.set()

    def _watch(self) -> None:
        hung_up = 0
        while not self._done.is_set():
            self._wake.wait(self.poll_s)
            if self._done.is_set():
                return
            if self.reason is None and self.fd is not None:
                # Twice in a row: one odd answer must not end a conversation.
                hung_up = hung_up + 1 if terminal_hung_up(self.fd) else 0
                if hung_up >= 2:
                    self.reason, self.exit_code = "terminal closed", 128 + signal.SIGHUP
            if self.reason is not None:
                break
        log.info("ending the console: %s", self.reason)
        self._stop()
        self._request_exit()
        if self._done.wait(self.grace_s):
            return
        log.warning("the console did not end %.1f s after saving (its terminal is gone?): exiting", self.grace_s)
        if self._close is not None:
            self._close()
        self._hard_exit(self.exit_code)
