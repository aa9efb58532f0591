"""The echo-cancellation stage (engine/aec.py) on synthetic signals.

Thresholds sit a little below what benchmarks/aec_synthetic.py measured (BENCHMARKS.md):
ERLE 37.3 dB, converged in 0.5 s, double-talk correlation 0.89 / 0.93 at +12 / +18 dB.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks.aec_synthetic import RATE, correlation, energy_db, run_room
from ppchat.engine.aec import AecUnavailable, EchoCanceller, load_backend
from ppchat.engine.speechlike import convolve, room_response, speech_like

pytest.importorskip("pywebrtc_audio")


@pytest.fixture(scope="module")
def room():
    return run_room(12.0, near_to_echo_db=(12.0, 18.0))


def test_echo_is_cancelled_in_a_synthetic_room(room):
    assert room["erle_db"] >= 33.0
    assert room["converged_s"] <= 1.5


def test_near_end_survives_double_talk(room):
    by_ratio = {d["near_to_echo_db"]: d for d in room["double_talk"]}
    assert by_ratio[18.0]["corr"] >= 0.9
    assert by_ratio[12.0]["corr"] >= 0.85


def test_live_erle_estimate_tracks_the_measured_erle():
    far = speech_like(8.0, RATE, seed=1, rms=0.05)
    echo = convolve(far, room_response(RATE, seed=2))
    mic = echo + (np.random.default_rng(3).standard_normal(far.shape[0]) * 10 ** (-70 / 20)).astype(np.float32)
    aec = EchoCanceller(RATE)
    assert aec.meter.db is None  # nothing heard yet
    outs = [aec.process(mic[i:i + 1920], far[i:i + 1920]) for i in range(0, far.shape[0] - 1919, 1920)]
    out = np.concatenate(outs)
    last = slice(out.shape[0] - 2 * RATE, out.shape[0])  # the meter's memory is about 1.5 s
    measured = energy_db(mic[last], out[last])
    assert aec.meter.db == pytest.approx(measured, abs=4.0)
    assert aec.meter.db > 25.0


def test_meter_ignores_silence_on_the_far_end():
    aec = EchoCanceller(RATE)
    silent = np.zeros(RATE, dtype=np.float32)
    talk = speech_like(1.0, RATE, seed=7, rms=0.05)
    aec.process(talk, silent)
    assert aec.meter.db is None


def test_latency_lines_the_raw_microphone_up_with_the_output():
    aec = EchoCanceller(RATE)
    talk = speech_like(4.0, RATE, seed=7, rms=0.05)
    out = aec.process(talk, np.zeros_like(talk))
    lag = aec.latency
    assert 0 < lag < 2 * aec.subframe
    start = RATE  # past the high-pass filter's start-up
    aligned = correlation(out[start + lag:], talk[start:talk.shape[0] - lag])
    unaligned = correlation(out[start:], talk[start:])
    assert aligned > 0.9 > unaligned + 0.3


def test_process_wants_whole_subframes_of_equal_length():
    aec = EchoCanceller(RATE)
    with pytest.raises(ValueError, match="sub-frames"):
        aec.process(np.zeros(250, np.float32), np.zeros(250, np.float32))
    with pytest.raises(ValueError, match="equal"):
        aec.process(np.zeros(240, np.float32), np.zeros(480, np.float32))


def test_reset_forgets_the_echo_path():
    far = speech_like(4.0, RATE, seed=1, rms=0.05)
    mic = convolve(far, room_response(RATE, seed=2))
    aec = EchoCanceller(RATE)
    aec.process(mic, far)
    assert aec.meter.db is not None
    aec.reset()
    assert aec.meter.db is None
    # After a reset it behaves like a canceller that never heard this room.
    second = slice(RATE, 2 * RATE)
    after_reset = aec.process(mic[second], far[second])
    fresh = EchoCanceller(RATE).process(mic[second], far[second])
    converged = EchoCanceller(RATE)
    converged.process(mic[:RATE], far[:RATE])
    np.testing.assert_allclose(after_reset, fresh, atol=1e-6)
    assert np.max(np.abs(converged.process(mic[second], far[second]) - fresh)) > 1e-3


def test_missing_library_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)  # import fails as if not installed
    with pytest.raises(AecUnavailable, match="pywebrtc-audio"):
        load_backend()
    with pytest.raises(AecUnavailable, match="pywebrtc-audio"):
        EchoCanceller(RATE)


def test_library_that_fails_to_start_is_unavailable():
    def broken(**kwargs):
        raise RuntimeError("AEC3 init failed")

    with pytest.raises(AecUnavailable, match="AEC3 init failed"):
        EchoCanceller(RATE, factory=broken)
