"""The real audio stack end to end, no mocks: PortAudio -> ALSA "pulse" plugin -> a
PulseAudio null sink whose monitor is the microphone (tools/virtual-audio.sh).

What is played to the sink comes back on the monitor, so a tone the engine plays must
show up in what it captures. Without PulseAudio these tests skip, except on CI
(env CI set), where a missing audio stack is a failure.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.runtime import DuplexRuntime, FrameResult
from ppchat.errors import AudioError

TONE_HZ = 700.0
FRAME = 1920
RATE = 24000


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_tone_played_to_the_sink_comes_back_from_the_monitor(pulse_device):
    """Plain sounddevice, none of ppchat's audio code: the test bench itself works."""
    import sounddevice as sd

    rate = int(pulse_device.default_samplerate)
    played = [0]
    captured: list[np.ndarray] = []

    def play(outdata, frames, time_info, status):
        n = np.arange(played[0], played[0] + frames)
        outdata[:, 0] = 0.5 * np.sin(2 * np.pi * TONE_HZ * n / rate)
        played[0] += frames

    def record(indata, frames, time_info, status):
        captured.append(indata[:, 0].copy())

    # Two streams, as DuplexAudio uses on ALSA (see there why not one duplex stream).
    settings = dict(device=pulse_device.index, samplerate=rate, channels=1, dtype="float32")
    deadline = time.monotonic() + 15
    with sd.OutputStream(callback=play, **settings), sd.InputStream(callback=record, **settings):
        # PulseAudio's monitor starts delivering a second or two after the stream starts.
        while sum(map(len, captured)) < 2 * rate and time.monotonic() < deadline:
            time.sleep(0.05)
    heard = np.concatenate(captured)[-rate:] if captured else np.zeros(1, np.float32)
    assert len(heard) == rate, f"captured only {sum(map(len, captured))} samples in 15 s"
    assert rms(heard) > 0.2, f"nothing came back (rms {rms(heard):.4f})"
    assert abs(peak_hz(heard, rate) - TONE_HZ) <= 2


class ToneProcessor:
    """An honest trivial model: remembers what it hears, answers with a continuous 700 Hz tone."""

    frame_size = FRAME
    sample_rate = RATE

    def __init__(self) -> None:
        self.calls = 0
        self._phase = 2 * np.pi * TONE_HZ * np.arange(FRAME) / RATE

    def process(self, pcm: np.ndarray) -> FrameResult:
        assert pcm.shape == (FRAME,) and pcm.dtype == np.float32
        start = self.calls * FRAME * 2 * np.pi * TONE_HZ / RATE
        self.calls += 1
        return FrameResult(pcm=(0.3 * np.sin(self._phase + start)).astype(np.float32), text_token=self.calls, text_piece="x")


def run_live(audio, seconds: float):
    """Run ToneProcessor on `audio` until `seconds` of frames were published."""
    bus = EventBus()
    sub = bus.subscribe(maxlen=100_000)
    processor = ToneProcessor()
    want = int(np.ceil(seconds * RATE / FRAME))
    events = []
    deadline = time.monotonic() + seconds * 3 + 10
    with DuplexRuntime(processor, audio, bus) as runtime:
        while sum(isinstance(e, StepEvent) for e in events) < want and time.monotonic() < deadline and runtime.running:
            event = sub.get(timeout=0.5)
            if event is not None:
                events.append(event)
    events += sub.drain()
    steps = [e for e in events if isinstance(e, StepEvent)]
    notices = [e for e in events if isinstance(e, NoticeEvent)]
    return runtime, processor, steps, notices, want


def check_live_run(audio, runtime, processor, steps, notices, want):
    assert not [n for n in notices if n.level == "error"], notices
    assert runtime.error is None and audio.buffers.error is None  # no callback errors
    assert len(steps) >= want
    assert [e.step for e in steps] == list(range(len(steps)))
    np.testing.assert_allclose([e.audio_time for e in steps], np.arange(len(steps)) * FRAME / RATE)
    processed = [e for e in steps if e.filled not in ("agent", "both")]
    assert processor.calls >= len(processed)  # the run may stop just after a step, before its event
    assert sum(e.dropped_in for e in steps) == len(steps) - len(processed)
    for e in processed:
        assert e.user_pcm.shape == (FRAME,) and e.agent_pcm.shape == (FRAME,)
        assert e.out_rms == pytest.approx(0.3 / np.sqrt(2), rel=0.01)
    # The tone went out through the sink and came back in through the monitor.
    heard = np.concatenate([e.user_pcm for e in steps[len(steps) // 2 :]])
    assert rms(heard) > 0.1, f"the tone did not come back (rms {rms(heard):.4f})"
    assert abs(peak_hz(heard, RATE) - TONE_HZ) <= 2 * RATE / len(heard)


def test_duplex_runtime_runs_live_through_the_virtual_device(pulse_device):
    from ppchat.engine.audio_io import DuplexAudio

    audio = DuplexAudio("pulse", "pulse")  # at the device rate, so resampled both ways
    assert audio.capture_rate == int(pulse_device.default_samplerate) != RATE
    assert not audio.duplex  # ALSA: two streams (see DuplexAudio)
    result = run_live(audio, seconds=10.0)
    check_live_run(audio, *result)


def test_different_input_and_output_devices_at_the_model_rate(pulse_device):
    from ppchat.engine.audio_io import DuplexAudio, resolve_device

    try:
        other = resolve_device("default", "output")
    except AudioError:
        pytest.skip("no second output device to pair with 'pulse'")
    if other.index == pulse_device.index:
        pytest.skip("'default' is the same device as 'pulse'")
    audio = DuplexAudio("pulse", "default", samplerate=RATE)  # both reach the same PulseAudio server
    assert not audio.duplex and audio.capture_rate == audio.playback_rate == RATE
    result = run_live(audio, seconds=3.0)
    check_live_run(audio, *result)


def test_unusable_stream_settings_are_an_audio_error(pulse_device):
    from ppchat.engine.audio_io import DuplexAudio

    with pytest.raises(AudioError, match=r"cannot open audio input 'pulse' at 7 Hz"):
        DuplexAudio("pulse", "pulse", samplerate=7)
    with pytest.raises(AudioError, match="no audio input device matches 'no-such-mic'"):
        DuplexAudio("no-such-mic", "pulse")
    DuplexAudio("pulse", "pulse").close()  # closing a stream that never started is fine
