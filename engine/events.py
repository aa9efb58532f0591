"""The engine's event stream: one `StepEvent` per 80 ms frame, fanned out to subscribers.

The engine publishes; the TUI, the session recorder and the monitor socket subscribe.
Publishing never blocks and never waits on a subscriber: each subscriber owns a bounded
queue, and when a slow subscriber lets its queue fill up the oldest events are dropped
and counted for that subscriber alone.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import numpy as np

PHASES = ("encode", "temporal", "depformer", "decode")


@dataclass
class StepEvent:
    """Everything known about one live frame.

    `step` counts live frames from 0. `audio_time` is `step * 0.08` s: the position of
    this frame in the session's audio tracks, which stay aligned with the step log.
    `user_pcm` / `agent_pcm` are the 1920-sample 24 kHz frames that go into the
    recording (silence where a frame was missing; then `filled` says so).
    """

    step: int
    audio_time: float
    wall_time: float
    timings_ms: dict[str, float]  # encode, temporal, depformer, decode, total
    text_token: int | None = None
    text_piece: str | None = None
    in_rms: float = 0.0
    in_peak: float = 0.0
    out_rms: float = 0.0
    out_peak: float = 0.0
    queue_in: int = 0
    queue_out: int = 0
    late: bool = False
    dropped_in: int = 0  # input frames dropped before this step (catch-up policy)
    underruns: int = 0  # output callbacks that found no audio since the last event
    xruns: int = 0  # PortAudio status flags seen since the last event
    filled: str | None = None  # "user" / "agent" / "both" when silence stands in for missing audio
    marked: bool = False
    user_pcm: np.ndarray | None = field(default=None, repr=False)
    agent_pcm: np.ndarray | None = field(default=None, repr=False)
    # With echo cancellation: the raw microphone (user_pcm is then what the model heard),
    # whether the model heard the cancelled microphone, and the live ERLE estimate (dB).
    mic_pcm: np.ndarray | None = field(default=None, repr=False)
    aec: bool | None = None
    erle_db: float | None = None


@dataclass
class NoticeEvent:
    """Something a person should see that is not a step: a state change, a warning, an error."""

    level: str  # "info" | "warning" | "error"
    message: str
    wall_time: float = 0.0


@dataclass
class ProgressEvent:
    """How far the conditioning of a new conversation has got: `done` of `total` frames of `task`.

    Conditioning blocks before the first step, and a long voice file takes many seconds (every
    frame is Mimi-encoded, then every prompt frame goes through the transformer), so the engine
    reports it as it goes: task "voice prompt" (encoding an audio voice), then "prompt prefill"
    (the transformer over voice, silence and role prompt). The last event of a task has
    done == total.
    """

    task: str
    done: int
    total: int
    wall_time: float = 0.0

    def describe(self, unit: str = " frames", task: str | None = None) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        return f"{task or self.task} {self.done}/{self.total}{unit} {percent}%"


class Subscription:
    """A subscriber's private bounded queue. `get` blocks up to `timeout`; `drain` never blocks."""

    def __init__(self, bus: EventBus, maxlen: int, name: str):
        self._bus = bus
        self._queue: collections.deque = collections.deque(maxlen=maxlen)
        self._ready = threading.Condition(threading.Lock())
        self.name = name
        self.dropped = 0
        self.closed = False

    def _offer(self, event: object) -> None:
        # Condition.acquire with blocking=False keeps publish non-blocking even if the
        # subscriber holds the lock; in that rare case the event goes in without notify.
        q = self._queue
        if len(q) == q.maxlen:
            self.dropped += 1
        q.append(event)
        if self._ready.acquire(blocking=False):
            try:
                self._ready.notify()
            finally:
                self._ready.release()

    def get(self, timeout: float | None = None):
        """The next event, or None after `timeout` seconds (or once closed and empty)."""
        with self._ready:
            if not self._queue and not self.closed:
                self._ready.wait(timeout)
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def drain(self) -> list:
        out = []
        q = self._queue
        while True:
            try:
                out.append(q.popleft())
            except IndexError:
                return out

    def close(self) -> None:
        self._bus.unsubscribe(self)
        self.closed = True
        with self._ready:
            self._ready.notify_all()


class EventBus:
    """Non-blocking fan-out of events to any number of subscribers.

    A notice published while nobody listens (a warning raised while the program sets up,
    before the console subscribes) is kept, up to `UNHEARD_NOTICES`, and handed to the next
    subscriber, so that it reaches the user instead of being lost.
    """

    UNHEARD_NOTICES = 16

    def __init__(self) -> None:
        self._subs: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()
        self._unheard: collections.deque[NoticeEvent] = collections.deque(maxlen=self.UNHEARD_NOTICES)

    def subscribe(self, maxlen: int = 256, name: str = "") -> Subscription:
        sub = Subscription(self, maxlen, name)
        with self._lock:
            while self._unheard:
                sub._offer(self._unheard.popleft())
            self._subs = self._subs + (sub,)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def publish(self, event: object) -> None:
        # Copy-on-write tuple: publishing never takes the lock.
        subs = self._subs
        if not subs and isinstance(event, NoticeEvent):
            self._unheard.append(event)
        for sub in subs:
            sub._offer(event)

    @property
    def subscribers(self) -> tuple[Subscription, ...]:
        return self._subs
