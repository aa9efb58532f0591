"""What a command without a console prints while a conversation conditions: its notices, and its
`ProgressEvent`s as `[prefill] voice prompt 520/2700 frames 19%` lines on stderr
(`ppchat talk --no-tui`, `ppchat respond`). A long voice file conditions for tens of seconds."""

from __future__ import annotations

import sys
import threading
import time

from ppchat.engine.events import NoticeEvent, ProgressEvent

ALL_LEVELS = ("info", "warning", "error")


class StartLines:
    """While `conv.start()` blocks the main thread (the prefill), a thread prints the notices of
    `levels` and, at most once a second per task and at its end, the progress it reads from `sub`;
    every other event is kept, in order, for the caller's own loop (`kept`)."""

    def __init__(self, sub, interval_s: float = 1.0, levels: tuple[str, ...] = ALL_LEVELS) -> None:
        self.sub, self.interval_s, self.levels = sub, interval_s, levels
        self.kept: list = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppchat-starting", daemon=True)

    def __enter__(self) -> StartLines:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        printed: dict[str, float] = {}
        while not self._done.is_set():
            ev = self.sub.get(timeout=0.1)
            try:
                if isinstance(ev, NoticeEvent) and ev.level in self.levels:
                    print(f"[{ev.level}] {ev.message}", file=sys.stderr, flush=True)
                elif isinstance(ev, ProgressEvent):
                    if ev.done >= ev.total or time.monotonic() - printed.get(ev.task, 0.0) >= self.interval_s:
                        printed[ev.task] = time.monotonic()
                        print(f"[prefill] {ev.describe()}", file=sys.stderr, flush=True)
                elif ev is not None:
                    self.kept.append(ev)
            except OSError:
                pass  # stderr went away; the caller's loop notices stdout
