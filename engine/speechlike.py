"""Deterministic speech-like test signals and a synthetic room, for echo-cancellation checks.

No speech recordings ship with ppchat, and the check must not depend on the model's voice,
so `ppchat aec-check`, the AEC benchmark and its tests use a signal with the features an
echo canceller cares about: voiced syllables (a harmonic source with a falling spectrum and
a wandering pitch, shaped by three formants), a syllabic envelope, and pauses. Two
different seeds and pitch ranges give a far-end and a near-end talker that are
uncorrelated with each other.
"""

from __future__ import annotations

import numpy as np

from ppchat.constants import SAMPLE_RATE


def speech_like(seconds: float, sample_rate: int = SAMPLE_RATE, *, seed: int = 0, pitch_hz: tuple[float, float] = (90.0, 160.0),
                rms: float = 0.05, pause_fraction: float = 0.2) -> np.ndarray:
    """A float32 speech-like signal with active-segment RMS `rms` (pauses are silent)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, dtype=np.float64)
    pos, phase = 0, 0.0
    nyquist_guard = sample_rate / 2 - 500
    while pos < n:
        if rng.random() < pause_fraction:
            pos += int(rng.uniform(0.1, 0.4) * sample_rate)
            continue
        m = min(n - pos, int(rng.uniform(0.12, 0.3) * sample_rate))
        f0 = np.linspace(rng.uniform(*pitch_hz), rng.uniform(*pitch_hz), m)
        ph = phase + np.cumsum(2 * np.pi * f0 / sample_rate)
        phase = float(ph[-1])
        source = np.zeros(m)
        for k in range(1, 80):  # glottal-like source: harmonics falling 6 dB per octave
            source += np.where(k * f0 < nyquist_guard, np.cos(k * ph) / k, 0.0)
        source += 0.05 * rng.standard_normal(m)  # breath noise
        freqs = np.fft.rfftfreq(m, 1.0 / sample_rate)
        shape = np.full(freqs.shape, 0.02)
        for centre, bandwidth, gain in ((rng.uniform(300, 900), 90, 1.0), (rng.uniform(900, 2400), 120, 0.6),
                                        (rng.uniform(2400, 3500), 200, 0.3)):
            shape += gain / (1.0 + ((freqs - centre) / bandwidth) ** 2)
        syllable = np.fft.irfft(np.fft.rfft(source) * shape, m)
        out[pos:pos + m] = syllable * np.sin(np.pi * np.arange(m) / m) ** 0.7
        pos += m
    active = out[out != 0]
    if active.size:
        out *= rms / np.sqrt(np.mean(active ** 2))
    return out.astype(np.float32)


def room_response(sample_rate: int = SAMPLE_RATE, *, delay_s: float = 0.04, tail_s: float = 0.2, gain: float = 0.5,
                  seed: int = 0) -> np.ndarray:
    """A loudspeaker-to-microphone impulse response: a direct path after `delay_s`, then a
    reverberant tail decaying by 60 dB over `tail_s`. `gain` is the response's L2 norm (the
    echo's level relative to the far end for white input)."""
    rng = np.random.default_rng(seed)
    d, tail = int(round(delay_s * sample_rate)), int(round(tail_s * sample_rate))
    h = np.zeros(d + tail)
    t = np.arange(tail) / sample_rate
    h[d:] = rng.standard_normal(tail) * np.exp(-6.9 * t / tail_s)
    h[d] += 3.0  # the direct path dominates, as on a laptop
    return (h * gain / np.sqrt(np.sum(h ** 2))).astype(np.float32)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """`x` through the impulse response `h`, same length as `x` (FFT convolution)."""
    n = x.shape[0] + h.shape[0] - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.shape[0]]
    return y.astype(np.float32)
