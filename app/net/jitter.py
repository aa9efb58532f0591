"""The playback jitter buffer of a network client: agent audio arrives in bursts, the step thread
takes one frame per step.

A step waits (up to `wait` seconds) for its own frame's answer rather than playing from a
fixed pre-buffer: on a network whose round trip fits in the wait, the agent is heard one
round trip after the microphone frame, as a local model is heard one step time after it.
When an answer comes later than that, the step plays what there is (silence fills the rest,
an underrun) and the late audio queues up: from then on the buffer holds that much more, so
a jittery network settles at the delay it needs. When the queue has not run below a frame
for `settle_s`, it is trimmed back, and it never holds more than `max_ms`: the delay comes
back down after a stall instead of staying up for good.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ppchat.engine.ringbuffer import RingBuffer


class JitterBuffer:
    """One writer thread (the network), one reader thread (the step thread)."""

    def __init__(self, frame_size: int, sample_rate: int, max_ms: float = 400.0, settle_s: float = 5.0) -> None:
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self.max_samples = max(int(max_ms * sample_rate / 1000), 2 * frame_size)
        self._settle_reads = max(1, round(settle_s * sample_rate / frame_size))
        self._ring = RingBuffer(4 * self.max_samples + 10 * frame_size)
        self._scratch = np.zeros(self._ring.capacity, dtype=np.float32)
        self._arrived = threading.Event()
        self.started = False  # audio has arrived once: from then on a short frame is an underrun
        self.underruns = 0
        self.skipped_samples = 0  # audio dropped to bring the delay back down
        self._low = self._ring.capacity
        self._reads = 0

    def write(self, pcm: np.ndarray) -> None:
        self._ring.write(pcm)
        self.started = True
        self._arrived.set()

    @property
    def buffered_ms(self) -> float:
        return 1000.0 * self._ring.available / self.sample_rate

    def read(self, out: np.ndarray, wait: float = 0.0) -> bool:
        """Fill `out` with the next audio, waiting up to `wait` s for it; False on an underrun."""
        need = len(out)
        deadline = time.monotonic() + wait
        while self._ring.available < need:
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if self._ring.available >= need or remaining <= 0 or not self._arrived.wait(remaining):
                break
        available = self._ring.available
        if available > self.max_samples:
            self._skip(available - self.frame_size)
        got = self._ring.read(out)
        self._settle()
        if got < need and self.started:
            self.underruns += 1
            return False
        return True

    def _settle(self) -> None:
        self._low = min(self._low, self._ring.available)
        self._reads += 1
        if self._reads >= self._settle_reads:
            if self._low >= self.frame_size:
                self._skip(self._low - self._low % self.frame_size)
            self._low, self._reads = self._ring.capacity, 0

    def _skip(self, samples: int) -> None:
        samples = min(samples, self._ring.available)
        self._ring.read(self._scratch[:samples])
        self.skipped_samples += samples
