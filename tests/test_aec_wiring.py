"""Echo cancellation wired into the live path: the far end, the measured delay, the raw
microphone, the console's switch, the recording, and what happens without the library.

The simulated sound card (ArrayAudio with a room) plays the runtime's output back into the
microphone through a known impulse response one block later, so the true loop delay is
known exactly: one 80 ms block plus the room's 40 ms direct path.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.aec import EchoCanceller
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.runtime import DuplexRuntime, FrameResult
from ppchat.engine.speechlike import speech_like
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.models.loader import load_model
from ppchat.sessions.store import list_sessions, load_session

pytest.importorskip("pywebrtc_audio")

RATE = 24000
FRAME = 1920
BLOCK_S = 0.08
ROOM_DELAY_S = 0.04


def clean_room() -> np.ndarray:
    """A direct path after 40 ms that dominates a 150 ms reverberant tail."""
    rng = np.random.default_rng(2)
    h = np.zeros(int(0.2 * RATE), dtype=np.float32)
    d = int(ROOM_DELAY_S * RATE)
    tail = h.shape[0] - d - 1
    h[d] = 0.4
    h[d + 1:] = 0.02 * rng.standard_normal(tail) * np.exp(-6.9 * np.arange(tail) / tail)
    return h


class Speaker:
    """A frame processor that plays a prepared signal (the 'agent') and hears the microphone."""

    frame_size = FRAME
    sample_rate = RATE

    def __init__(self, signal: np.ndarray) -> None:
        self.signal = signal
        self.n = 0

    def process(self, pcm: np.ndarray) -> FrameResult:
        out = np.zeros(FRAME, dtype=np.float32)
        chunk = self.signal[self.n * FRAME:(self.n + 1) * FRAME]
        out[:chunk.shape[0]] = chunk
        self.n += 1
        return FrameResult(pcm=out)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def energy_db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(a, dtype=np.float64)) / np.sum(np.square(b, dtype=np.float64))))


@pytest.fixture(scope="module")
def room_run():
    """10 s in the simulated room: the agent talks throughout, the user from 6 s to 8.5 s;
    echo cancellation is switched off for the last second."""
    seconds = 10.0
    agent = speech_like(seconds + 2, RATE, seed=1, rms=0.05)
    user = np.zeros(int(seconds * RATE), dtype=np.float32)
    talk = slice(6 * RATE, int(8.5 * RATE))
    user[talk] = speech_like(2.5, RATE, seed=7, pitch_hz=(180, 280), rms=0.05)
    audio = ArrayAudio(user, RATE, realtime=True, room=clean_room())
    bus = EventBus()
    sub = bus.subscribe(maxlen=100_000)
    runtime = DuplexRuntime(Speaker(agent), audio, bus, canceller=EchoCanceller(RATE))
    runtime.start()
    while runtime.running and runtime.steps < 9 * 12.5:
        time.sleep(0.05)
    runtime.aec_enabled = False
    switched_at = runtime.steps
    runtime.join(timeout=20)
    far_tail = runtime.echo._far.read(runtime.echo._far.end - RATE, RATE)
    played = audio.played()[runtime.echo._far.end - RATE:runtime.echo._far.end]
    runtime.stop()
    events = sub.drain()
    return {
        "runtime": runtime, "user": user, "talk": talk, "switched_at": switched_at, "far_tail": far_tail, "played": played,
        "steps": [e for e in events if isinstance(e, StepEvent)],
        "notices": [e for e in events if isinstance(e, NoticeEvent)],
    }


def test_the_far_end_is_exactly_what_was_played(room_run):
    np.testing.assert_array_equal(room_run["far_tail"], room_run["played"])


def test_the_loop_delay_is_measured_within_10_ms(room_run):
    echo = room_run["runtime"].echo
    assert echo.tracker.measured
    assert echo.delay_s == pytest.approx(BLOCK_S + ROOM_DELAY_S, abs=0.010)


def test_echo_is_removed_and_the_user_survives(room_run):
    steps, talk = room_run["steps"], room_run["talk"]
    assert not [n.message for n in room_run["notices"] if n.level == "error"]
    mic = np.concatenate([e.mic_pcm for e in steps])
    heard = np.concatenate([e.user_pcm for e in steps])
    agent_only = slice(3 * RATE, talk.start)
    assert energy_db(mic[agent_only], heard[agent_only]) >= 25.0
    assert all(e.aec for e in steps[:room_run["switched_at"] - 1])
    assert max(e.erle_db for e in steps[3 * 12: talk.start // FRAME] if e.erle_db is not None) >= 25.0
    # The user speaks over the agent: what the model heard still carries the voice. The raw
    # track is behind the microphone by the canceller's latency, like the cleaned one.
    latency = room_run["runtime"].echo.canceller.latency
    voice = room_run["user"][talk]
    assert correlation(heard[talk.start + latency:talk.stop + latency], voice) >= 0.75
    assert correlation(heard[talk.start:talk.stop], voice) < 0.5  # so the latency is real, not assumed


def test_switched_off_the_model_hears_the_raw_microphone(room_run):
    steps = room_run["steps"]
    after = [e for e in steps if e.step > room_run["switched_at"]]
    assert after and all(not e.aec for e in after)
    for e in after:
        np.testing.assert_array_equal(e.user_pcm, e.mic_pcm)
    before = steps[room_run["switched_at"] - 3]
    assert not np.array_equal(before.user_pcm, before.mic_pcm)


def test_muted_means_silence_in_both_tracks():
    pcm = speech_like(2.0, RATE, seed=7, rms=0.05)
    audio = ArrayAudio(pcm, RATE, realtime=True, room=clean_room())
    bus = EventBus()
    sub = bus.subscribe(maxlen=1000)
    runtime = DuplexRuntime(Speaker(speech_like(3.0, RATE, seed=1, rms=0.05)), audio, bus, canceller=EchoCanceller(RATE))
    runtime.muted = True
    runtime.start()
    runtime.join(timeout=20)
    runtime.stop()
    steps = [e for e in sub.drain() if isinstance(e, StepEvent)]
    assert steps and all(not e.mic_pcm.any() and not e.user_pcm.any() for e in steps)


# --- the controller: recording, missing library ----------------------------------------------


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)


def _talk(demo_model, tmp_path, seconds: float = 3.0, **options):
    pcm = speech_like(seconds, RATE, seed=7, rms=0.05)
    conv = Conversation(TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False, **options), model=demo_model,
                        audio_factory=lambda: ArrayAudio(pcm, RATE, realtime=True, room=clean_room()))
    sub = conv.bus.subscribe(maxlen=10_000)
    conv.start(prompt="casual")
    state = conv.aec
    conv.runtime.join(timeout=30)
    conv.close()
    events = sub.drain()
    return state, [e for e in events if isinstance(e, StepEvent)], [e for e in events if isinstance(e, NoticeEvent)]


def test_recording_keeps_the_raw_microphone_beside_what_the_model_heard(demo_model, tmp_path):
    state, steps, notices = _talk(demo_model, tmp_path)
    assert state == "on"
    [summary] = list_sessions(tmp_path)
    user, _ = sf.read(summary.path / "user.wav", dtype="float32")
    mic, _ = sf.read(summary.path / "mic.wav", dtype="float32")
    np.testing.assert_array_equal(user, np.concatenate([e.user_pcm for e in steps]))
    np.testing.assert_array_equal(mic, np.concatenate([e.mic_pcm for e in steps]))
    lines = [json.loads(line) for line in (summary.path / "steps.jsonl").read_text().splitlines()]
    step_lines = [d for d in lines if "step" in d and "kind" not in d]
    assert all(d.get("aec") is True for d in step_lines)
    assert any("erle" in d for d in step_lines)
    assert json.loads((summary.path / "session.json").read_text())["format_version"] == 2
    assert load_session(summary.path).status == "ok"


def test_a_format_1_session_without_mic_wav_still_loads(demo_model, tmp_path):
    _talk(demo_model, tmp_path, seconds=1.0, aec=False)
    [summary] = list_sessions(tmp_path)
    assert not (summary.path / "mic.wav").exists()  # --aec off: nothing to keep apart
    info = json.loads((summary.path / "session.json").read_text())
    info["format_version"] = 1
    (summary.path / "session.json").write_text(json.dumps(info))
    lines = [json.loads(line) for line in (summary.path / "steps.jsonl").read_text().splitlines()]
    assert not any("aec" in d or "erle" in d for d in lines)
    session = load_session(summary.path)
    assert session.status == "ok" and session.frames == info["stats"]["steps"]


def test_without_the_aec_library_the_conversation_runs_with_a_warning(demo_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)  # as if not installed
    state, steps, notices = _talk(demo_model, tmp_path, seconds=1.5)
    assert state == "unavailable"
    warning = [n.message for n in notices if n.level == "warning" and "pywebrtc-audio" in n.message]
    assert warning and "half-duplex" in warning[0]
    assert len(steps) >= 18 and all(e.mic_pcm is None and e.aec is None for e in steps)
    [summary] = list_sessions(tmp_path)
    assert not (summary.path / "mic.wav").exists() and load_session(summary.path).status == "ok"


# --- the real audio stack: PortAudio -> ALSA "pulse" -> the PulseAudio null sink -------------


def test_live_on_the_virtual_device_with_a_room_in_the_loop(pulse_device):
    """benchmarks/aec_live.py, shorter: the room is applied by the harness between the
    monitor (which hears the speaker exactly) and the capture ring."""
    from benchmarks.aec_live import private_sink, run_live

    with private_sink(48000):
        result = run_live(20.0, samplerate=48000)
    shown = json.dumps(result)  # a dict message would be cut to one line by pytest
    assert result["layout"] == "duplex", shown
    # Under load an under-run can move the estimate by ~15 ms for a second (seen, with ERLE unharmed:
    # AEC3 absorbs a few ms itself), so the delay is judged over the run, window by window.
    assert result["delay_error_ms_median"] is not None and result["delay_error_ms_median"] <= 10.0, shown
    # The canceller runs on the sound card's delay figure (60-130 ms off here) until the measured
    # one first arrives, 2.5-5 s in, so the echo is judged from a second after that (CI once measured
    # late and failed on the two seconds before). On the shared 2-core machine an under-run still
    # costs the echo for a second here and there, so the typical second is checked (measured
    # 26.7-36.9 dB), and that most seconds cancel at all: a wrong delay or a dead canceller fails both.
    settled = result["erle_db_per_s"][int(result["settled_from_s"]):]
    assert len(settled) >= 3, shown  # settled by 9 s of the 12 s before the user talks
    assert result["erle_db_median_of_settled_seconds"] >= 20.0, shown
    assert sum(db >= 10.0 for db in settled) >= 2 / 3 * len(settled), shown
    assert result["user_corr"] >= 0.55, shown  # measured 0.63-0.87


def test_a_duplex_stream_that_never_comes_up_falls_back_and_offers_the_gate(pulse_device, monkeypatch):
    from ppchat.engine.audio_io import DuplexAudio

    monkeypatch.setattr(DuplexAudio, "_came_up", lambda self, stream: False)
    audio = DuplexAudio("pulse", "pulse", echo_reference=True, samplerate=RATE)
    assert audio.duplex
    try:
        audio.start()
        assert not audio.duplex and len(audio._streams) == 2
        [note] = audio.buffers.notes
        assert "did not come up" in note and "half-duplex gate" in note
    finally:
        audio.close()


def test_different_input_and_output_devices_say_what_that_means_for_echo(pulse_device):
    from ppchat.engine.audio_io import DuplexAudio, resolve_device

    other = resolve_device("default", "output")
    if other.index == pulse_device.index:
        pytest.skip("'default' is the same device as 'pulse'")
    audio = DuplexAudio("pulse", "default", echo_reference=True)
    try:
        assert not audio.duplex
        [note] = audio.buffers.notes
        assert "different devices" in note and "half-duplex gate" in note
    finally:
        audio.close()


def test_aec_check_measures_the_virtual_device(pulse_device, capsys):
    from benchmarks.aec_live import private_sink
    from ppchat.cli import main

    with private_sink(48000):
        assert main(["aec-check", "--input-device", "pulse", "--output-device", "pulse", "--seconds", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "duplex" and report["device_rate"] == 48000
    assert report["echo_db"] > -6.0  # the sink's monitor hears the speaker at full level
    assert report["measured_delay_ms"] is not None and report["erle_db"] >= 10.0, report  # measured 17.9-20.1 dB


def test_aec_check_without_the_library_says_how_to_get_it(monkeypatch, capsys):
    from ppchat.cli import main

    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    assert main(["aec-check"]) == 2
    err = capsys.readouterr().err
    assert "pywebrtc-audio" in err and "pip install" in err
