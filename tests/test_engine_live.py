"""The whole live engine on the demo model: virtual sound card, late steps, the controller."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.errors import PPChatError
from ppchat.models.loader import load_model
from ppchat.sampling import Sampling
from ppchat.sessions.store import list_sessions, load_session


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)


def _collect(sub) -> tuple[list[StepEvent], list[NoticeEvent]]:
    events = sub.drain()
    return [e for e in events if isinstance(e, StepEvent)], [e for e in events if isinstance(e, NoticeEvent)]


def test_live_conversation_through_the_virtual_sound_card(pulse_device, demo_model, tmp_path):
    options = TalkOptions(model="demo", input_device="pulse", output_device="pulse", samplerate=24000,
                          sessions_dir=tmp_path, monitor=False, sampling=Sampling(seed=1))
    with Conversation(options, model=demo_model) as conv:
        sub = conv.bus.subscribe(maxlen=10_000, name="test")
        conv.start(prompt="casual")
        deadline = time.monotonic() + 30
        steps: list[StepEvent] = []
        notices: list[NoticeEvent] = []
        # At least 10 s of live audio (the monitor source needs a moment before it delivers).
        while conv.running and time.monotonic() < deadline and len(steps) < 130:
            time.sleep(0.2)
            s, n = _collect(sub)
            steps += s
            notices += n
        assert conv.runtime.error is None
        conv.stop()
        s, n = _collect(sub)
        steps += s
        notices += n
    assert len(steps) >= 125, f"only {len(steps)} steps in 30 s"
    assert [e.step for e in steps] == list(range(len(steps)))
    assert not [n.message for n in notices if n.level == "error"]
    assert any(e.text_token is not None for e in steps)
    # The model's voice went to the sink and came back on the monitor: the mic heard something.
    assert max(e.in_peak for e in steps) > 0.01
    [summary] = list_sessions(tmp_path)
    session = load_session(summary.path)
    assert session.status == "ok" and session.frames == len(steps)


def test_a_slow_step_is_counted_and_lag_stays_bounded(demo_model, tmp_path):
    pcm = (0.2 * np.sin(np.arange(24000 * 3) * 0.05)).astype(np.float32)
    options = TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False, max_backlog_frames=3)
    conv = Conversation(options, model=demo_model, audio_factory=lambda: ArrayAudio(pcm, 24000, realtime=True))
    real_process = conv.pipeline.process

    def slow_process(frame):
        time.sleep(0.2)  # 2.5x the 80 ms budget
        return real_process(frame)

    conv.pipeline.process = slow_process
    sub = conv.bus.subscribe(maxlen=10_000)
    conv.start(prompt="casual")
    conv.runtime.join(timeout=30)
    conv.close()
    steps, notices = _collect(sub)
    processed = [e for e in steps if e.filled not in ("agent", "both")]
    assert sum(e.late for e in processed) >= len(processed) - 1
    assert sum(e.dropped_in for e in steps) > 0
    assert max(e.queue_in for e in steps) <= 3
    # Every input frame is accounted for, so the recorded tracks stay aligned.
    assert len(steps) == -(-len(pcm) // 1920)
    assert not [n for n in notices if n.level == "error"]


def test_unknown_voice_is_a_clear_error(demo_model, tmp_path):
    conv = Conversation(TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False), model=demo_model,
                        audio_factory=lambda: ArrayAudio(np.zeros(1920, np.float32), 24000, realtime=False))
    with pytest.raises(PPChatError, match="NOSUCHVOICE"):
        conv.start(voice="NOSUCHVOICE")
    assert not conv.running
    conv.close()


def test_custom_wav_voice_conditions_the_model(demo_model, tmp_path):
    import soundfile as sf

    voice = tmp_path / "me.wav"
    sf.write(voice, (0.3 * np.sin(np.arange(44100) * 0.07)).astype(np.float32), 44100)
    conv = Conversation(TalkOptions(model="demo", sessions_dir=tmp_path / "s", monitor=False), model=demo_model,
                        audio_factory=lambda: ArrayAudio(np.zeros(1920 * 2, np.float32), 24000, realtime=False))
    report = conv.start(voice=str(voice), prompt="casual")
    conv.runtime.join(timeout=30)
    conv.close()
    assert report.voice_frames == 13  # 1 s at 24 kHz in 1920-sample chunks, last one padded
    assert str(voice) in conv.voices()


def test_info_carries_the_sessions_own_statistics_for_the_monitor(demo_model, tmp_path):
    mic = np.zeros(1920 * 40, np.float32)
    conv = Conversation(TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False), model=demo_model,
                        audio_factory=lambda: ArrayAudio(mic, 24000, realtime=False))
    assert conv.info["session_stats"] is None  # nothing recorded yet
    conv.start(prompt="casual")
    assert not conv.info["muted"] and not conv.info["half_duplex"]
    conv.set_mute(True)
    conv.set_half_duplex(True)
    assert conv.info["muted"] and conv.info["half_duplex"]  # the monitor's badges
    conv.runtime.join(timeout=60)
    deadline = time.monotonic() + 10
    while conv.info["session_stats"]["steps"] < 40 and time.monotonic() < deadline:
        time.sleep(0.1)  # the recorder publishes its figures at each flush (1 s)
    stats = conv.info["session_stats"]
    conv.close()
    saved = load_session(list_sessions(tmp_path)[0].path).info.stats
    assert stats["steps"] == saved.steps == 40
    assert stats["total_ms"]["p95"] == pytest.approx(saved.total_ms["p95"]) and stats["total_ms"]["max"] == saved.total_ms["max"]


def test_the_model_pipeline_destroys_its_thread_streams_and_still_runs_on_the_next_thread(demo_model):
    import threading

    from ppchat.engine.pipeline import ModelPipeline

    pipeline = ModelPipeline(demo_model, Sampling(seed=3))
    silence = np.zeros(pipeline.frame_size, dtype=np.float32)
    pcm = []

    def conversation():  # what a step thread does, then what it does as it ends
        pipeline.start(None, "assistant")
        pcm.append(np.concatenate([pipeline.process(silence).pcm for _ in range(3)]))
        pipeline.thread_ended()

    for _ in range(2):  # a restart: a new step thread after the first one ended
        worker = threading.Thread(target=conversation)
        worker.start()
        worker.join(120)
    assert len(pcm) == 2 and pcm[0].shape == (3 * pipeline.frame_size,)
    np.testing.assert_array_equal(pcm[0], pcm[1])  # same seed, same conversation: nothing lost with the streams
