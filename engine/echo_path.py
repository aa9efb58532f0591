"""The microphone path with echo cancellation (step-thread side, never in the callback).

The audio callbacks copy two streams into rings: the microphone, and the far end — the
samples handed to the speaker, in the order played. Here both are resampled to the model's
rate and kept in short histories addressed by sample index; then, 10 ms at a time, the
microphone goes through the canceller with the far end from `delay` earlier (less a
margin, so the far end always leads its echo and AEC3's own search covers the rest).

`delay` starts from the endpoint's own figure (PortAudio's stream times) and is then
measured (engine/echo_delay.py) while the agent speaks. When it moves by more than
`RESET_JUMP_S`, the canceller starts again: the echo path it learnt is gone.

Two streams leave the model's frames: the cleaned microphone (what the model hears; with
the canceller switched off, the raw microphone) and the raw microphone, both behind the
canceller's own latency so that they line up sample for sample (user.wav / mic.wav).
"""

from __future__ import annotations

import numpy as np

from ppchat.engine.aec import EchoCanceller
from ppchat.engine.echo_delay import DelayTracker, History
from ppchat.engine.resample import StreamResampler
from ppchat.engine.ringbuffer import RingBuffer

MARGIN_S = 0.08  # the far end is given this much ahead of its measured echo
RESET_JUMP_S = 0.0  # AEC3 took ~1.5 s to follow a 120 ms jump by itself, ~0.5 s after a reset
ESTIMATE_WINDOW_S = 2.0
ESTIMATE_EVERY_S = 0.5
FAR_WAIT_S = 0.2  # how long the microphone waits for a far end that is late, then takes silence


class EchoCancelledCapture:
    """Device-rate microphone + far-end rings in, model-rate cleaned and raw frames out."""

    def __init__(self, capture: RingBuffer, echo: RingBuffer, capture_rate: int, playback_rate: int, sample_rate: int,
                 frame_size: int, canceller: EchoCanceller, initial_delay_s: float) -> None:
        self._capture, self._echo = capture, echo
        self._frame_size = frame_size
        self._rate = sample_rate
        self.canceller = canceller
        self.enabled = True
        self.tracker = DelayTracker(sample_rate, initial_delay_s)
        self._mic_resampler = StreamResampler(capture_rate, sample_rate)
        self._far_resampler = StreamResampler(playback_rate, sample_rate)
        self._mic_chunk = np.zeros(max(1, round(frame_size * capture_rate / sample_rate)), dtype=np.float32)
        self._far_chunk = np.zeros(max(1, round(frame_size * playback_rate / sample_rate)), dtype=np.float32)
        history = int((ESTIMATE_WINDOW_S + 2 * self.tracker.max_lag_s + 2.0) * sample_rate)
        self._mic = History(history)
        self._far = History(history)
        staging = int(capture.capacity * sample_rate / capture_rate) + 4 * frame_size
        self._clean = RingBuffer(staging)
        self._raw = RingBuffer(staging)
        self._sub = canceller.subframe
        self._near_buf = np.zeros(self._sub, dtype=np.float32)
        self._far_buf = np.zeros(self._sub, dtype=np.float32)
        self._raw_buf = np.zeros(self._sub, dtype=np.float32)
        self._pos = 0  # next microphone sample (model rate) to cancel
        self._next_estimate = int(ESTIMATE_WINDOW_S * sample_rate)
        self._flushed = False
        self.resets = 0
        self.delay_log: list[tuple[float, float]] = []  # (microphone time s, new delay s) at each change

    @property
    def delay_s(self) -> float:
        """The far-end-to-microphone delay in use (measured once the agent has spoken)."""
        return self.tracker.delay_s

    @property
    def erle_db(self) -> float | None:
        return self.canceller.meter.db

    def _shift(self) -> int:
        return int(round((self.tracker.delay_s - MARGIN_S) * self._rate))

    def _pull(self) -> None:
        while self._capture.available >= self._mic_chunk.shape[0]:
            self._capture.read(self._mic_chunk)
            self._mic.write(self._mic_resampler.process(self._mic_chunk))
        while self._echo.available >= self._far_chunk.shape[0]:
            self._echo.read(self._far_chunk)
            self._far.write(self._far_resampler.process(self._far_chunk))

    def frames_waiting(self) -> int:
        """Complete model frames ready now (cancels whatever has arrived)."""
        self._pull()
        self._cancel_available()
        return self._clean.available // self._frame_size

    def _cancel_available(self) -> None:
        sub, latency = self._sub, self.canceller.latency
        wait = int(FAR_WAIT_S * self._rate)
        while self._mic.end - self._pos >= sub:
            far_start = self._pos - self._shift()
            if far_start + sub > self._far.end and self._mic.end - self._pos < wait and not self._flushed:
                break  # the far end for this sub-frame has not come through yet
            self._mic.read(self._pos, sub, self._near_buf)
            self._far.read(far_start, sub, self._far_buf)
            cleaned = self.canceller.process(self._near_buf, self._far_buf)
            self._mic.read(self._pos - latency, sub, self._raw_buf)
            self._clean.write(cleaned if self.enabled else self._raw_buf)
            self._raw.write(self._raw_buf)
            self._pos += sub
            if self._pos >= self._next_estimate:
                self._next_estimate += int(ESTIMATE_EVERY_S * self._rate)
                self._measure_delay()

    def _measure_delay(self) -> None:
        window = int(ESTIMATE_WINDOW_S * self._rate)
        start = self._pos - window
        # The far end around the microphone's window by the largest lag searched either side,
        # so that every lag is compared over the whole window.
        reach = int(self.tracker.max_lag_s * self._rate)
        far = self._far.read(start - reach, window + 2 * reach)
        mic = np.zeros_like(far)
        self._mic.read(start, window, mic[reach:reach + window])
        before = self.tracker.delay_s
        if self.tracker.update(far, mic):
            self.delay_log.append((self._pos / self._rate, self.tracker.delay_s))
            if abs(self.tracker.delay_s - before) > RESET_JUMP_S:
                self.canceller.reset()
                self.resets += 1

    def flush(self) -> None:
        """End of input: convert what is left and cancel the last partial sub-frame, once."""
        if self._flushed:
            return
        self._flushed = True
        rest = np.zeros(self._capture.available, dtype=np.float32)
        self._capture.read(rest)
        self._mic.write(self._mic_resampler.process(rest, last=True))
        far_rest = np.zeros(self._echo.available, dtype=np.float32)
        self._echo.read(far_rest)
        self._far.write(self._far_resampler.process(far_rest, last=True))
        pad = (-(self._mic.end - self._pos)) % self._sub
        self._mic.write(np.zeros(pad, dtype=np.float32))
        self._cancel_available()

    def read(self, out: np.ndarray) -> int:
        """The next frame the model hears (zero-padded when the input ended early)."""
        return self._clean.read(out)

    def read_raw(self, out: np.ndarray) -> int:
        """The same frame of the raw microphone."""
        return self._raw.read(out)
