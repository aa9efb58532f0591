"""How long the speaker's sound takes to come back through the microphone, measured.

AEC3 searches for the echo within about half a second of the far end it is given. The
sound card's own figure for the loop (PortAudio's stream times and latencies) is a good
start on a duplex stream, but through PulseAudio's ALSA plugin it was seen to wander by
±80 ms, the real loop delay to jump when a stream under-runs, and two separate streams
have no common sample clock at all (see README, "Echo cancellation"). So the step thread
measures the delay itself: GCC-PHAT (cross-correlation with every frequency weighted
equally, which gives a sharp peak for speech) between the far end and the microphone,
at 8 kHz, over the last `window_s`, whenever the far end was active enough.
"""

from __future__ import annotations

import numpy as np
import soxr

ESTIMATE_RATE = 8000


class History:
    """The last `capacity` samples of a stream, addressed by their absolute index."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self.end = 0  # samples written since the start: the next sample's index

    def write(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n > self.capacity:  # only the newest part fits; the rest still counts
            self.end += n - self.capacity
            x, n = x[-self.capacity:], self.capacity
        start = self.end % self.capacity
        first = min(n, self.capacity - start)
        self._data[start:start + first] = x[:first]
        self._data[:n - first] = x[first:n]
        self.end += n

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Samples `[start, start + n)`; zeros for indices not written yet or already forgotten."""
        out = np.zeros(n, dtype=np.float32) if out is None else out
        out[:] = 0.0
        lo = max(start, self.end - self.capacity, 0)
        hi = min(start + n, self.end)
        if hi > lo:
            a = lo % self.capacity
            first = min(hi - lo, self.capacity - a)
            out[lo - start:lo - start + first] = self._data[a:a + first]
            out[lo - start + first:hi - start] = self._data[:hi - lo - first]
        return out


def gcc_phat_delay(far: np.ndarray, mic: np.ndarray, rate: int, max_lag_s: float, min_lag_s: float = 0.0,
                   band_hz: tuple[float, float] = (150.0, 3600.0), beta: float = 1.0) -> tuple[float, float]:
    """The lag (seconds) at which `far` best explains `mic` (mic[t] ≈ far[t - lag]), and its
    sharpness: the peak over the largest value more than 30 ms away (1 = no clear peak).

    Both arrays cover the same time span at `rate`; lags from `min_lag_s` (may be negative)
    to `max_lag_s` are searched.
    """
    n = far.shape[0]
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(far.astype(np.float64), size)
    m = np.fft.rfft(mic.astype(np.float64), size)
    cross = m * np.conj(f)
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    cross[(freqs < band_hz[0]) | (freqs > band_hz[1])] = 0.0
    cross /= (np.abs(cross) + 1e-12) ** beta
    corr = np.fft.irfft(cross, size)
    lags = np.arange(int(np.floor(min_lag_s * rate)), int(np.ceil(max_lag_s * rate)) + 1)
    values = corr[lags % size]
    best = int(np.argmax(values))
    if not values[best] > 0:  # silence on either side: nothing to measure
        return 0.0, 1.0
    guard = int(0.03 * rate)  # reflections of a room crowd the first tens of ms after the peak
    others = np.concatenate([values[:max(0, best - guard)], values[best + guard + 1:]])
    rival = float(np.max(others)) if others.size else 0.0
    sharpness = float(values[best] / max(rival, 1e-12))
    # Parabolic interpolation around the peak for sub-sample precision.
    lag = float(lags[best])
    if 0 < best < values.shape[0] - 1:
        a, b, c = values[best - 1], values[best], values[best + 1]
        denom = a - 2 * b + c
        if denom < 0:
            lag += 0.5 * (a - c) / denom
    return lag / rate, sharpness


class DelayTracker:
    """Keeps a measured far-end-to-microphone delay, starting from `initial_s`.

    Call `update(far, mic)` with windows of the two streams at `sample_rate` that cover the
    same span (the far end indexed as played, the microphone as captured). An estimate is
    taken only when the far end was active in at least a quarter of the window and the
    correlation peak is clear; the delay moves only when two such estimates in a row agree
    within 10 ms and differ from the current value by more than `move_s`.
    """

    def __init__(self, sample_rate: int, initial_s: float, *, max_lag_s: float = 1.0, min_lag_s: float = -1.0,
                 move_s: float = 0.012, sharpness: float = 2.0) -> None:
        self.sample_rate = int(sample_rate)
        self.delay_s = float(initial_s)
        self.measured = False  # True once a measurement replaced the initial figure
        self.max_lag_s = max_lag_s
        self.min_lag_s = min_lag_s
        self.move_s = move_s
        self.sharpness = sharpness
        self._candidate: float | None = None

    def update(self, far: np.ndarray, mic: np.ndarray) -> bool:
        """Look at one window; True if the delay changed."""
        block = self.sample_rate // 50
        usable = far.shape[0] // block * block
        if usable == 0:
            return False
        block_rms = np.sqrt(np.mean(np.square(far[:usable].reshape(-1, block), dtype=np.float64), axis=1))
        if np.mean(block_rms > 1e-3) < 0.25:
            return False
        far8 = soxr.resample(far, self.sample_rate, ESTIMATE_RATE)
        mic8 = soxr.resample(mic, self.sample_rate, ESTIMATE_RATE)
        lag, sharp = gcc_phat_delay(far8, mic8, ESTIMATE_RATE, self.max_lag_s, self.min_lag_s)
        if sharp < self.sharpness:
            self._candidate = None
            return False
        if self._candidate is None or abs(lag - self._candidate) > 0.010:
            self._candidate = lag
            return False
        self._candidate = lag
        first = not self.measured
        self.measured = True
        if first or abs(lag - self.delay_s) > self.move_s:
            self.delay_s = lag
            return True
        return False
