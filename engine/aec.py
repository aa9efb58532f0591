"""Acoustic echo cancellation: WebRTC's AEC3 (through pywebrtc-audio) on 10 ms sub-frames.

The canceller takes the microphone ("near end") and what the speaker played ("far end"),
both at the model's rate, and returns the microphone with the agent's echo removed. It
runs on the step thread, never in the PortAudio callback: AEC3 allocates and takes
about 1 % of a core.

AEC3 delays its output by a fixed few milliseconds (9.3 ms at 24 kHz: its band split and
resampling); `latency` is that delay, measured once when the canceller is built, so that
the raw microphone track can be lined up with the cleaned one.

pywebrtc-audio is imported lazily: when it is missing or fails to load, `AecUnavailable`
says so and the conversation goes on without echo cancellation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ppchat.constants import SAMPLE_RATE

SUBFRAME_SECONDS = 0.01  # AEC3 works on 10 ms frames


class AecUnavailable(Exception):
    """The echo-cancellation library cannot be used; the message says why and what to do."""


ProcessorFactory = Callable[..., object]


def load_backend() -> ProcessorFactory:
    """pywebrtc-audio's `AudioProcessor` class, or `AecUnavailable`."""
    try:
        from pywebrtc_audio import AudioProcessor
    except Exception as exc:  # ImportError, or OSError from a broken wheel
        raise AecUnavailable(
            f"echo cancellation is off: pywebrtc-audio cannot be loaded ({type(exc).__name__}: {exc}). "
            "Install it (`pip install pywebrtc-audio`), use headphones, or turn on the half-duplex gate (h)."
        ) from exc
    return AudioProcessor


class ErleMeter:
    """A running estimate of the echo return loss enhancement (dB): how much quieter the
    cleaned microphone is than the raw one while the far end is playing.

    Powers are smoothed over about `time_constant_s` of far-end activity; sub-frames where
    the far end is quieter than `far_floor_rms` are skipped (no echo to remove). Near-end
    speech during far-end activity lowers the estimate, so it errs on the modest side.
    """

    def __init__(self, subframe_seconds: float = SUBFRAME_SECONDS, time_constant_s: float = 1.5,
                 far_floor_rms: float = 1e-3, warmup_s: float = 0.5) -> None:
        self._alpha = subframe_seconds / time_constant_s
        self._far_floor = far_floor_rms ** 2
        self._warmup = int(round(warmup_s / subframe_seconds))
        self.reset()

    def reset(self) -> None:
        self._mic = 0.0
        self._out = 0.0
        self._active = 0

    def update(self, mic: np.ndarray, out: np.ndarray, far: np.ndarray) -> None:
        """One sub-frame of raw microphone, cleaned microphone and far end."""
        if float(np.mean(np.square(far, dtype=np.float64))) < self._far_floor:
            return
        mic_power = float(np.mean(np.square(mic, dtype=np.float64)))
        out_power = float(np.mean(np.square(out, dtype=np.float64)))
        if self._active == 0:
            self._mic, self._out = mic_power, out_power
        else:
            self._mic += self._alpha * (mic_power - self._mic)
            self._out += self._alpha * (out_power - self._out)
        self._active += 1

    @property
    def db(self) -> float | None:
        """The estimate, or None until enough far-end activity has been seen."""
        if self._active < self._warmup or self._mic <= 0.0:
            return None
        return 10.0 * math.log10(self._mic / max(self._out, self._mic * 1e-9))


class EchoCanceller:
    """AEC3 at `sample_rate` on mono float32, fed in whole 10 ms sub-frames.

    `stream_delay_ms` is a hint for AEC3's own delay search (the remaining delay between the
    far end as given and its echo in the microphone); it may be changed while running.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, *, stream_delay_ms: int = 0, factory: ProcessorFactory | None = None) -> None:
        self.sample_rate = int(sample_rate)
        self.subframe = int(round(self.sample_rate * SUBFRAME_SECONDS))
        self._factory = factory or load_backend()
        self._apm = self._new_processor(stream_delay_ms)
        self.latency = self._measure_latency()
        self.meter = ErleMeter()

    def _new_processor(self, stream_delay_ms: int = 0):
        try:
            return self._factory(sample_rate=self.sample_rate, echo_cancellation=True, stream_delay_ms=int(stream_delay_ms))
        except Exception as exc:  # a library that loads but will not run is "unavailable" too
            raise AecUnavailable(f"echo cancellation is off: the AEC could not be started ({type(exc).__name__}: {exc})") from exc

    def _measure_latency(self) -> int:
        """How many samples a fresh canceller delays the near end (far end silent)."""
        probe = self._new_processor()
        rng = np.random.default_rng(0)
        near = (0.05 * rng.standard_normal(40 * self.subframe)).astype(np.float32)
        silent = np.zeros(self.subframe, dtype=np.float32)
        out = np.concatenate([probe.process(near[i:i + self.subframe], silent) for i in range(0, near.shape[0], self.subframe)])
        skip = 10 * self.subframe  # past the high-pass filter's start-up
        window = near.shape[0] - skip - 4 * self.subframe
        scores = [abs(float(np.dot(out[skip + lag: skip + lag + window], near[skip: skip + window]))) for lag in range(4 * self.subframe)]
        return int(np.argmax(scores))

    @property
    def stream_delay_ms(self) -> int:
        return int(self._apm.stream_delay_ms)

    @stream_delay_ms.setter
    def stream_delay_ms(self, value: int) -> None:
        self._apm.stream_delay_ms = int(max(0, value))

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel the echo of `far` in `near` (equal lengths, whole sub-frames); returns a new array."""
        n = near.shape[0]
        if far.shape[0] != n or n % self.subframe:
            raise ValueError(f"near and far must be equal whole numbers of {self.subframe}-sample sub-frames, got {n} and {far.shape[0]}")
        out = np.empty(n, dtype=np.float32)
        sub = self.subframe
        for i in range(0, n, sub):
            near_sub = np.ascontiguousarray(near[i:i + sub], dtype=np.float32)
            far_sub = np.ascontiguousarray(far[i:i + sub], dtype=np.float32)
            out[i:i + sub] = self._apm.process(near_sub, far_sub)
            self.meter.update(near_sub, out[i:i + sub], far_sub)
        return out

    def reset(self) -> None:
        """Forget the echo path (after a device change or a restart of the streams)."""
        self._apm.reset()
        self.meter.reset()
