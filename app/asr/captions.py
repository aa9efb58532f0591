"""Live captions: the user's words while they speak, from a separate, lower-priority process.

`LiveCaptions` subscribes to the engine's event bus like any other listener, sends each
step's user audio down a pipe to `caption_worker`, and publishes what comes back as
`CaptionEvent`s on the same bus. Nothing here can hold the conversation up: the bus
never waits for a subscriber, the pipe is written without blocking (a frame that does
not fit is dropped and counted), and the worker is another process. When the worker
dies, stalls or never loads, it is killed and started again with a notice; after
`max_restarts` the captions switch off with a notice and the conversation goes on. A
worker that is alive but slower than speech (it says how far it has got once a second)
is not restarted: it gets a notice, and is switched off if it stays far behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppchat.asr.caption_protocol import frame_message, reset_message
from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent

log = logging.getLogger(__name__)
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.float32)
AFTERWARDS = "`ppchat transcribe` can add the user's words after the conversation"


@dataclass
class CaptionEvent:
    """A caption: `partial` grows while the user speaks, `final` replaces it when they pause."""

    kind: str  # "partial" | "final"
    start: float  # session time, seconds
    end: float | None
    text: str
    wall_time: float = 0.0


@dataclass
class CaptionSettings:
    model_dir: Path
    language: str | None = None
    stall_s: float = 20.0  # not a word from the worker for this long (it says something every second): stalled
    lag_notice_s: float = 10.0  # captions this far behind the conversation: say so, once
    max_lag_s: float = 30.0  # this far behind (its backlog is full: speech is being skipped) ...
    lag_grace_s: float = 30.0  # ... for this long: switch off
    load_timeout_s: float = 300.0  # the model must load within this
    max_restarts: int = 3
    log_path: Path | None = None  # the worker's stderr (tracebacks); None = discarded
    command: list[str] | None = None  # the worker's command line; None = `caption_worker` on model_dir


class LiveCaptions:
    def __init__(self, bus: EventBus, settings: CaptionSettings):
        self.bus = bus
        self.settings = settings
        self.state = "off"  # "starting" (loading the model), "on", "off"
        self.restarts = 0
        self.dropped_frames = 0
        self.process: subprocess.Popen | None = None
        self._sub = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = b""  # the unsent tail of a message (a pipe write can be partial)
        self._last_step = -1
        self._spawned_at = 0.0
        self._progress_at = 0.0  # when the worker last said anything
        self._lag_s = 0.0  # how far the transcription is behind what the worker has received
        self._lagging_since: float | None = None  # when the lag went past max_lag_s
        self._lag_told = False
        self._sent_at = 0.0  # when audio was last sent
        self._worker_error: str | None = None

    # ------------------------------------------------------------------------------ control

    def start(self) -> LiveCaptions:
        self._sub = self.bus.subscribe(maxlen=256, name="captions")
        self._spawn()
        self._thread = threading.Thread(target=self._feed_loop, name="captions-feed", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sub is not None:
            self._sub.close()
        self._end_process(graceful=True)
        self.state = "off"

    # ------------------------------------------------------------------------------ process

    def _spawn(self) -> None:
        command = self.settings.command or [sys.executable, "-m", "ppchat.asr.caption_worker", str(self.settings.model_dir)]
        if self.settings.language and self.settings.command is None:
            command += ["--language", self.settings.language]
        stderr = subprocess.DEVNULL
        if self.settings.log_path is not None:
            with contextlib.suppress(OSError):
                self.settings.log_path.parent.mkdir(parents=True, exist_ok=True)
                stderr = open(self.settings.log_path, "ab")
        env = dict(os.environ, HF_HUB_OFFLINE="1")  # the worker is given a local folder; never go online
        try:
            # Its own session: a Ctrl-C in the terminal is ppchat's to handle, not the worker's.
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            env=env, start_new_session=True)  # fmt: skip
        except OSError as exc:
            self.process = None
            self._switch_off(f"the caption process cannot start ({exc})")
            return
        finally:
            if stderr is not subprocess.DEVNULL:
                stderr.close()
        os.set_blocking(self.process.stdin.fileno(), False)
        _grow_pipe(self.process.stdin.fileno())
        self.state = "starting"
        self._pending = b""
        self._last_step = -1
        self._spawned_at = self._progress_at = time.monotonic()
        self._sent_at = 0.0
        self._worker_error = None
        self._lag_s, self._lagging_since, self._lag_told = 0.0, None, False
        threading.Thread(target=self._read_loop, args=(self.process,), name="captions-read", daemon=True).start()

    def _end_process(self, graceful: bool) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # end of input: a healthy worker exits by itself
        try:
            proc.wait(timeout=2 if graceful else 0)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _restart(self, reason: str) -> None:
        self._end_process(graceful=False)
        if self.restarts >= self.settings.max_restarts:
            self._switch_off(f"{reason}; gave up after {self.restarts} restart(s)")
            return
        self.restarts += 1
        self._notice("warning", f"captions: {reason}; restarting the caption process ({self.restarts}/{self.settings.max_restarts})")
        self._spawn()

    def _switch_off(self, reason: str, level: str = "warning") -> None:
        self._end_process(graceful=False)
        self.state = "off"
        self._notice(level, f"captions switched off: {reason}. The conversation goes on; {AFTERWARDS}")

    def _notice(self, level: str, message: str) -> None:
        if level != "info":
            log.warning("%s", message)
        self.bus.publish(NoticeEvent(level=level, message=message, wall_time=time.time()))

    # ------------------------------------------------------------------------------ feeding

    def _feed_loop(self) -> None:
        while not self._stop.is_set():
            event = self._sub.get(timeout=0.25)
            try:
                if isinstance(event, StepEvent) and self.process is not None:
                    self._send(event)
                self._watch()
            except Exception as exc:  # a bug here must end the captions, never the conversation
                log.exception("caption feeder failed")
                self._switch_off(f"internal error ({type(exc).__name__}: {exc})", level="error")
            if self.state == "off":
                return

    def _send(self, event: StepEvent) -> None:
        message = frame_message(event.step, SILENCE if event.user_pcm is None else event.user_pcm)
        if event.step <= self._last_step:  # a new conversation counts from 0 again
            message = reset_message() + message
        if not self._write_pending() or not self._write(message):
            self.dropped_frames += 1
            return
        self._last_step = event.step

    def _write_pending(self) -> bool:
        if self._pending:
            self._pending = self._pending[self._write_some(self._pending) :]
        return not self._pending

    def _write(self, message: bytes) -> bool:
        """Send `message` or nothing of it, unless the pipe takes only part: the rest goes first next time."""
        written = self._write_some(message)
        if written:
            self._pending = message[written:]
            self._sent_at = time.monotonic()
        return written > 0

    def _write_some(self, data: bytes) -> int:
        try:
            return os.write(self.process.stdin.fileno(), data)
        except BlockingIOError:
            return 0  # the pipe is full: the worker is not reading
        except (BrokenPipeError, ValueError, OSError):
            return 0  # it died: `_watch` restarts it

    def _watch(self) -> None:
        proc = self.process
        if proc is None:
            return
        now = time.monotonic()
        if self._worker_error is not None:
            self._switch_off(self._worker_error, level="error")  # a broken model does not mend itself
        elif proc.poll() is not None:
            self._restart(f"the caption process stopped (exit status {proc.returncode})")
        elif self.state == "starting" and now - self._spawned_at > self.settings.load_timeout_s:
            self._restart(f"the ASR model did not load within {self.settings.load_timeout_s:.0f} s")
        elif self.state == "on" and self._sent_at > self._progress_at and now - self._progress_at > self.settings.stall_s:
            self._restart(f"the caption process stalled (nothing heard back for {now - self._progress_at:.0f} s)")
        elif self.state == "on":
            self._watch_lag(now)

    def _watch_lag(self, now: float) -> None:
        lag = self._lag_s
        if lag > self.settings.lag_notice_s and not self._lag_told:
            self._lag_told = True
            self._notice("warning", f"captions are {lag:.0f} s behind: the recogniser is slower than speech on this machine")
        if lag <= self.settings.max_lag_s:
            self._lagging_since = None
        elif self._lagging_since is None:
            self._lagging_since = now
        elif now - self._lagging_since > self.settings.lag_grace_s:
            self._switch_off(f"the recogniser cannot keep up with speech on this machine ({lag:.0f} s behind)")

    # ------------------------------------------------------------------------------ reading

    def _read_loop(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            try:
                doc = json.loads(raw)
                kind = doc["type"]
            except (ValueError, KeyError, TypeError):
                continue  # not ours (a library printing to stdout)
            if proc is not self.process:
                return  # replaced meanwhile
            if kind == "ready":
                self.state = "on"
                self._progress_at = time.monotonic()
                self._notice("info", "captions on")
            elif kind == "progress":
                self._progress_at = time.monotonic()
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    self._lag_s = max(0, int(doc["received"]) - int(doc["step"])) * FRAME_SAMPLES / SAMPLE_RATE
            elif kind in ("partial", "final"):
                self._progress_at = time.monotonic()
                end = doc.get("end")
                self.bus.publish(CaptionEvent(kind, float(doc["start"]), None if end is None else float(end),
                                              str(doc.get("text", "")), time.time()))  # fmt: skip
            elif kind == "error":
                self._worker_error = str(doc.get("message", "the caption process failed"))


def _grow_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let the pipe hold ~10 s of audio (Linux; 64 KiB = 0.7 s otherwise), so that a worker busy
    for a moment in a transcription loses nothing."""
    import fcntl

    setpipe = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Python < 3.10 lacks the name
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, size)
