"""Live captions: the caption process fed from the bus, its timing, and its isolation from the conversation.

The ASR model is a tiny random Qwen3-ASR checkpoint (see test_asr_offline), so the
words are nonsense; what is checked is which audio becomes which caption, at what
session time, and that a dead, stalled or broken caption process costs the
conversation nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
import soxr

from ppchat.asr.captions import CaptionEvent, CaptionSettings, LiveCaptions
from ppchat.asr.random_model import build_random_asr
from ppchat.asr.utterances import UtteranceStream
from ppchat.constants import FRAME_SAMPLES
from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.models.loader import load_model
from ppchat.sessions.store import list_sessions, load_session
from tests.asr_helpers import speech_track

EXPECTED = [(0.8, 2.4), (3.8, 5.6), (7.32, 8.2)]  # as in test_asr_offline: the bursts, padded and merged


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    return build_random_asr(tmp_path_factory.mktemp("asr") / "tiny-qwen3-asr")


def frames(track: np.ndarray):
    for step in range(len(track) // FRAME_SAMPLES):
        yield step, track[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES]


def step_event(step: int, pcm: np.ndarray) -> StepEvent:
    return StepEvent(step=step, audio_time=step * 0.08, wall_time=time.time(), timings_ms={"total": 1.0}, user_pcm=pcm)


# --- the worker's logic, in-process --------------------------------------------------------------


def test_captioner_hands_each_utterance_to_the_model_with_its_session_time():
    track = speech_track()
    clips, out = [], []

    def probe(clip):  # stands in for the model: records what it is given
        clips.append(clip.copy())
        return f"clip {len(clips)}"

    captioner = UtteranceStream(probe, out.append)
    for step, pcm in frames(track):
        captioner.add(step, pcm)
        captioner.maybe_partial()
    finals = [d for d in out if d["type"] == "final"]
    assert [(d["start"], d["end"]) for d in finals] == [pytest.approx(e, abs=0.021) for e in EXPECTED]
    # The clips are exactly the stream-resampled audio between those times.
    stream = soxr.ResampleStream(24000, 16000, 1, dtype="float32", quality="HQ")
    audio16 = np.concatenate([stream.resample_chunk(pcm) for _, pcm in frames(track)])
    for d in finals:
        clip = clips[int(d["text"].split()[1]) - 1]
        np.testing.assert_array_equal(clip, audio16[round(d["start"] * 16000) : round(d["end"] * 16000)])
    # While the 1.6 s utterance at 3.8 s is spoken, a partial caption of it comes before its final.
    partials = [d for d in out if d["type"] == "partial"]
    assert any(p["start"] == finals[1]["start"] for p in partials)
    assert out.index(next(p for p in partials if p["start"] == finals[1]["start"])) < out.index(finals[1])


def test_captioner_keeps_session_time_across_lost_frames_and_a_late_start():
    track = speech_track()
    out = []
    captioner = UtteranceStream(lambda clip: "x", out.append)
    for step, pcm in frames(track):
        if step % 10 != 3:  # every tenth frame lost on the way: silence stands in
            captioner.add(step, pcm)
    assert [(d["start"], d["end"]) for d in out if d["type"] == "final"][0] == pytest.approx((0.8, 2.4), abs=0.021)

    out.clear()
    late = UtteranceStream(lambda clip: "x", out.append)  # a restarted worker joins at step 1000 (80 s)
    for step, pcm in frames(track):
        late.add(1000 + step, pcm)
    assert [d["start"] for d in out if d["type"] == "final"] == pytest.approx([80 + s for s, _ in EXPECTED], abs=0.021)


# --- the process ------------------------------------------------------------------------------------


def run_captions(bus: EventBus, captions: LiveCaptions, track: np.ndarray, *, speed: float = 4.0, during=None):
    """Publish `track` as steps at `speed` x real time; returns every event the bus carried."""
    sub = bus.subscribe(maxlen=100_000, name="test")
    captions.start()
    deadline = time.monotonic() + 60
    while captions.state == "starting" and time.monotonic() < deadline:
        time.sleep(0.05)
    for step, pcm in frames(track):
        bus.publish(step_event(step, pcm))
        if during is not None:
            during(step)
        time.sleep(0.08 / speed)
    return sub


def wait_for(sub, predicate, timeout=30.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += sub.drain()
        if predicate(seen):
            return seen
        time.sleep(0.05)
    return seen


def finals_of(events):
    return [e for e in events if isinstance(e, CaptionEvent) and e.kind == "final"]


def test_live_captions_come_back_on_the_bus_at_session_times(tiny_asr):
    bus = EventBus()
    captions = LiveCaptions(bus, CaptionSettings(tiny_asr))
    try:
        sub = run_captions(bus, captions, np.concatenate([speech_track(), np.zeros(24000, np.float32)]))
        seen = wait_for(sub, lambda ev: len(finals_of(ev)) >= 3)
    finally:
        captions.close()
    assert captions.dropped_frames == 0
    assert [(e.start, e.end) for e in finals_of(seen)] == [pytest.approx(e, abs=0.021) for e in EXPECTED]
    assert all(e.text for e in finals_of(seen))
    assert any(isinstance(e, NoticeEvent) and e.message == "captions on" for e in seen)
    assert captions.process is None and captions.state == "off"


def test_a_killed_caption_process_is_restarted_with_a_notice(tiny_asr):
    bus = EventBus()
    captions = LiveCaptions(bus, CaptionSettings(tiny_asr))
    pids = []

    def kill_once(step):
        if step == 20:
            pids.append(captions.process.pid)
            os.kill(captions.process.pid, signal.SIGKILL)

    try:
        sub = run_captions(bus, captions, speech_track(), speed=1.0, during=kill_once)
        seen = wait_for(sub, lambda ev: captions.state == "on" and finals_of(ev))
        assert captions.restarts == 1 and captions.process.pid != pids[0]
    finally:
        captions.close()
    notices = [e.message for e in seen if isinstance(e, NoticeEvent)]
    assert any("the caption process stopped (exit status -9); restarting" in m for m in notices)
    assert finals_of(seen)  # the new process captions what came after


def test_a_stalled_caption_process_is_replaced_then_switched_off(tiny_asr):
    bus = EventBus()
    captions = LiveCaptions(bus, CaptionSettings(tiny_asr, stall_s=1.5, max_restarts=1))
    stopped = []
    pcm = speech_track()[:FRAME_SAMPLES]

    def freeze(step):  # SIGSTOP: alive but silent, the case a crash check alone would miss
        if captions.state == "on" and captions.process and captions.process.pid not in stopped and step % 10 == 0:
            stopped.append(captions.process.pid)
            os.kill(captions.process.pid, signal.SIGSTOP)

    try:
        sub = bus.subscribe(maxlen=100_000)
        captions.start()
        deadline = time.monotonic() + 90
        step = 0
        while captions.state != "off" and time.monotonic() < deadline:
            bus.publish(step_event(step, pcm))
            freeze(step)
            step += 1
            time.sleep(0.04)
        seen = sub.drain()
    finally:
        for pid in stopped:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # both frozen workers were killed, not left behind
        captions.close()
    notices = [e.message for e in seen if isinstance(e, NoticeEvent)]
    assert len(stopped) == 2 and captions.state == "off"
    assert any("stalled" in m and "restarting" in m for m in notices)
    assert any(m.startswith("captions switched off: the caption process stalled") and "ppchat transcribe" in m for m in notices)


def test_a_broken_model_switches_captions_off_without_restarts(tiny_asr, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_asr.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    bus = EventBus()
    captions = LiveCaptions(bus, CaptionSettings(broken))
    try:
        sub = run_captions(bus, captions, np.zeros(FRAME_SAMPLES * 5, np.float32))
        seen = wait_for(sub, lambda ev: captions.state == "off", timeout=60)
    finally:
        captions.close()
    [notice] = [e for e in seen if isinstance(e, NoticeEvent)]
    assert notice.level == "error" and notice.message.startswith("captions switched off: cannot load the ASR model")
    assert captions.restarts == 0


# --- in a conversation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)


def test_killing_the_caption_process_mid_conversation_leaves_conversation_and_recording_whole(demo_model, tiny_asr, tmp_path):
    track = speech_track()
    options = TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False, captions=True, asr_model=str(tiny_asr))
    conv = Conversation(options, model=demo_model, audio_factory=lambda: ArrayAudio(track, 24000, realtime=True))
    sub = conv.bus.subscribe(maxlen=100_000, name="test")
    killed = []
    try:
        conv.start(prompt="casual")
        deadline = time.monotonic() + 60
        while conv.running and time.monotonic() < deadline:
            time.sleep(0.1)
            if conv.captions and conv.captions.state == "on" and not killed and conv.runtime.steps > 40:
                killed.append(conv.captions.process.pid)
                os.kill(killed[0], signal.SIGKILL)
        conv.runtime.join(timeout=30)
    finally:
        conv.close()
    events = sub.drain()
    steps = [e for e in events if isinstance(e, StepEvent)]
    notices = [e.message for e in events if isinstance(e, NoticeEvent)]
    assert killed, "the caption process never came up"
    assert [e.step for e in steps] == list(range(len(steps))) and len(steps) == len(track) // FRAME_SAMPLES
    assert any("caption process stopped" in m for m in notices)
    [summary] = list_sessions(tmp_path)
    session = load_session(summary.path)
    assert session.status == "ok" and session.frames == len(steps)
    np.testing.assert_array_equal(session.user_audio[: len(steps) * FRAME_SAMPLES], track[: len(steps) * FRAME_SAMPLES])


def test_captions_without_a_model_are_a_notice_and_the_conversation_runs(demo_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False, captions=True)
    pcm = np.zeros(24000, np.float32)
    conv = Conversation(options, model=demo_model, audio_factory=lambda: ArrayAudio(pcm, 24000, realtime=False))
    sub = conv.bus.subscribe(maxlen=10_000)
    try:
        conv.start(prompt="casual")
        conv.runtime.join(timeout=30)
    finally:
        conv.close()
    events = sub.drain()
    assert any(isinstance(e, NoticeEvent) and e.level == "warning"
               and "captions are off: the ASR model Qwen/Qwen3-ASR-0.6B is not downloaded; run `ppchat download --asr`" in e.message
               for e in events)  # fmt: skip
    assert len([e for e in events if isinstance(e, StepEvent)]) == -(-24000 // FRAME_SAMPLES)  # the last frame zero-padded
    assert conv.captions is None


SLOW_WORKER = r"""
import json, sys, threading, time
received = [-1]
def read():  # drains stdin like the real worker's inbox, so ppchat's writes always fit
    while sys.stdin.buffer.read(8 + 7680):
        received[0] += 1
threading.Thread(target=read, daemon=True).start()
print(json.dumps({"type": "ready"}), flush=True)
while True:  # alive, but it never gets past step 0: a recogniser far slower than speech
    time.sleep(0.2)
    print(json.dumps({"type": "progress", "step": 0, "received": received[0]}), flush=True)
"""


def test_a_worker_slower_than_speech_is_told_then_switched_off_not_restarted(tmp_path):
    bus = EventBus()
    settings = CaptionSettings(tmp_path, command=[sys.executable, "-c", SLOW_WORKER], lag_notice_s=1.0, max_lag_s=2.0,
                               lag_grace_s=1.0, stall_s=5.0)  # fmt: skip
    captions = LiveCaptions(bus, settings)
    try:
        sub = run_captions(bus, captions, np.zeros(FRAME_SAMPLES * 100, np.float32), speed=8.0)  # 8 s of audio in 1 s
        seen = wait_for(sub, lambda ev: captions.state == "off", timeout=20)
    finally:
        captions.close()
    notices = [e.message for e in seen if isinstance(e, NoticeEvent) and e.level != "info"]
    assert notices[0].startswith("captions are ") and notices[0].endswith("s behind: the recogniser is slower than speech on this machine")
    assert notices[1].startswith("captions switched off: the recogniser cannot keep up with speech on this machine")
    assert captions.restarts == 0 and len(notices) == 2


def test_headless_talk_prints_final_captions_beside_the_agents_turns(demo_model, tiny_asr, tmp_path, capsys):
    from ppchat.commands.talk import _run_headless

    track = np.concatenate([speech_track(), np.zeros(24000 * 6, np.float32)])  # time for the captions to come back
    options = TalkOptions(model="demo", sessions_dir=tmp_path, monitor=False, captions=True, asr_model=str(tiny_asr))
    conv = Conversation(options, model=demo_model, audio_factory=lambda: ArrayAudio(track, 24000, realtime=True))
    try:
        assert _run_headless(conv, None) == 0
    finally:
        conv.close()
    users = [line[6:13] for line in capsys.readouterr().out.splitlines() if line.startswith("user  ")]
    # Captions still on their way when the conversation ends are not waited for (they are live only),
    # so on a busy machine the last may be missing; those printed are the first ones, in order.
    assert len(users) >= 2 and users == ["00:00.8", "00:03.8", "00:07.3"][: len(users)]


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [0] state, [16] nice."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_caption_process_runs_at_lower_priority_and_ends_when_ppchat_is_killed(tiny_asr):
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path\n"
        "from ppchat.engine.events import EventBus\n"
        "from ppchat.asr.captions import LiveCaptions, CaptionSettings\n"
        f"c = LiveCaptions(EventBus(), CaptionSettings(Path({str(tiny_asr)!r}))).start()\n"
        "print(c.process.pid, flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        worker = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        nice = None
        while nice is None and time.monotonic() < deadline:  # the worker lowers its own priority as it starts
            nice = int(_proc_stat(worker)[16]) or None
            time.sleep(0.1)
        assert nice == 10
    finally:
        parent.kill()  # ppchat crashes: no close(), no cleanup
        parent.wait()
    deadline = time.monotonic() + 15
    gone = False
    while not gone and time.monotonic() < deadline:
        try:
            gone = _proc_stat(worker)[0] == "Z"  # exited; only its entry waits to be collected
        except FileNotFoundError:
            gone = True
        time.sleep(0.1)
    assert gone, "the caption process outlived ppchat"
