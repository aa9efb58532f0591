"""Recorder: bus → session files round trip, alignment, disk full, unwritable folders, kill -9."""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.errors import SessionError
from ppchat.sessions.files import RecordingStopped
from ppchat.sessions.jsonl import read_jsonl
from ppchat.sessions.recorder import Recorder
from ppchat.sessions.schema import SessionMeta, read_session_info, step_record
from ppchat.sessions.stats import LatencyHistogram
from ppchat.sessions.store import list_sessions, load_session, new_session_dir
from ppchat.sessions.wav_writer import read_wav_layout

FRAME = 1920
META = SessionMeta(model_id="test/model", quantization="q8", voice="NATF2", role_prompt="Be brief.", sampling={"temp": 0.8, "seed": 7})


def user_frame(step):
    import numpy as np

    return (0.5 * np.sin(np.arange(1920) * 0.01 + step)).astype(np.float32)


def agent_frame(step):
    import numpy as np

    return (0.25 * np.cos(np.arange(1920) * 0.02 - step)).astype(np.float32)


def make_step(step: int, total_ms: float = 40.0, **fields) -> StepEvent:
    fields.setdefault("user_pcm", user_frame(step))
    fields.setdefault("agent_pcm", agent_frame(step))
    return StepEvent(step=step, audio_time=step * 0.08, wall_time=1000.0 + step * 0.08, timings_ms={"total": total_ms}, **fields)


def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    """Liveness wait for another thread/process (not a speed check: the bound is generous)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def start_recorder(root: Path, bus: EventBus, **kwargs) -> Recorder:
    started = datetime(2026, 11, 25, 1, 57, 4).astimezone()
    return Recorder(bus, new_session_dir(root, started), META, started=started, **kwargs)


def test_round_trip_values_stats_and_files(tmp_path):
    bus = EventBus()
    recorder = start_recorder(tmp_path, bus)
    totals = [30.0 + (i * 7) % 41 for i in range(40)]
    published = []
    for i, total in enumerate(totals):
        event = make_step(
            i,
            total,
            text_token=3 if i % 4 else 500 + i,
            text_piece=None if i % 4 else f"▁w{i}",
            late=(i == 5),
            dropped_in=2 if i == 6 else 0,
            underruns=1 if i in (7, 8) else 0,
            xruns=3 if i == 9 else 0,
            filled="user" if i == 10 else None,
        )
        published.append(event)
        bus.publish(event)
        if i == 20:
            bus.publish(NoticeEvent("warning", "mic glitch", wall_time=1.5))
    recorder.close()
    assert recorder.status == "complete" and recorder.notices == []

    [summary] = list_sessions(tmp_path)
    assert summary.status == "ok" and summary.voice == "NATF2" and summary.role_prompt == "Be brief."
    assert summary.duration_s == pytest.approx(40 * 0.08)
    assert summary.mean_ms == pytest.approx(np.mean(totals), abs=1e-3)
    assert summary.p95_ms == pytest.approx(np.percentile(totals, 95), rel=LatencyHistogram.RELATIVE_ERROR)

    session = load_session(summary.path)
    assert session.warnings == [] and session.status == "ok"
    assert [step_record(e) for e in session.steps] == [step_record(e) for e in published]
    np.testing.assert_array_equal(session.user_audio, np.concatenate([user_frame(i) for i in range(40)]))
    np.testing.assert_array_equal(session.agent_audio, np.concatenate([agent_frame(i) for i in range(40)]))
    assert [(t, n.message) for t, n in session.notices] == [(pytest.approx(21 * 0.08), "mic glitch")]

    info = session.info
    assert (info.meta.model_id, info.meta.quantization, info.meta.sampling["seed"]) == ("test/model", "q8", 7)
    assert info.pid == os.getpid() and info.started == datetime(2026, 11, 25, 1, 57, 4).astimezone()
    assert summary.name.startswith("2026-11-25T01-57-04_")
    stats = info.stats
    assert (stats.steps, stats.late_frames, stats.dropped_frames) == (40, 1, 2)
    assert (stats.underruns, stats.xruns, stats.filled_frames) == (2, 3, 1)
    assert stats.total_ms["max"] == max(totals)
    assert stats.total_ms["p99"] == pytest.approx(np.percentile(totals, 99), rel=LatencyHistogram.RELATIVE_ERROR)

    for name, frame in (("user.wav", user_frame), ("agent.wav", agent_frame)):
        data, rate = sf.read(summary.path / name, dtype="float32")
        assert rate == 24000 and sf.info(summary.path / name).channels == 1
        np.testing.assert_array_equal(data, np.concatenate([frame(i) for i in range(40)]))
    raw = json.loads((summary.path / "session.json").read_text())
    assert raw["format_version"] == 2 and raw["status"] == "complete"
    assert bus.subscribers == ()


def test_missing_steps_and_pcm_become_silence_and_tracks_stay_aligned(tmp_path):
    bus = EventBus()
    watcher = bus.subscribe(100, "test")
    recorder = start_recorder(tmp_path, bus)
    steps = [0, 1, 2, 3, 4, 8, 9]  # 5..7 never reached the recorder
    for s in steps:
        bus.publish(make_step(s, agent_pcm=None) if s == 2 else make_step(s))
    recorder.close()

    session = load_session(recorder.session_dir)
    assert len(session.user_audio) == len(session.agent_audio) == 10 * FRAME
    for s in range(10):
        user, agent = session.frame_audio(s)
        np.testing.assert_array_equal(user, user_frame(s) if s in steps else 0)
        np.testing.assert_array_equal(agent, agent_frame(s) if s in steps and s != 2 else 0)
    assert [e.step for e in session.steps] == steps
    assert session.info.stats.lost_steps == 3
    warnings = [n for n in watcher.drain() if isinstance(n, NoticeEvent)]
    assert len(warnings) == 1 and "3 steps" in warnings[0].message and warnings[0].level == "warning"
    assert recorder.notices == warnings
    assert any("3 steps" in n.message for _, n in session.notices)  # the recorder logged its own warning


def test_odd_sized_pcm_is_fitted_to_one_frame(tmp_path):
    bus = EventBus()
    recorder = start_recorder(tmp_path, bus)
    bus.publish(make_step(0, user_pcm=np.ones(1000, np.float32), agent_pcm=np.ones(3000, np.float32)))
    bus.publish(make_step(1))
    recorder.close()
    session = load_session(recorder.session_dir)
    np.testing.assert_array_equal(session.user_audio[:FRAME], np.r_[np.ones(1000), np.zeros(920)])
    np.testing.assert_array_equal(session.agent_audio[:FRAME], np.ones(FRAME))
    np.testing.assert_array_equal(session.user_audio[FRAME:], user_frame(1))


def test_disk_full_stops_recording_not_the_conversation(tmp_path, monkeypatch):
    bus = EventBus()
    watcher = bus.subscribe(1000, "conversation")
    recorder = start_recorder(tmp_path, bus, flush_interval=0.05)
    session_dir = recorder.session_dir
    for s in range(20):
        bus.publish(make_step(s))
    wait_until(lambda: read_wav_layout(session_dir / "agent.wav").data_bytes == 20 * FRAME * 4
               and len(read_jsonl(session_dir / "steps.jsonl").records) == 20, "the first 20 steps on disk")  # fmt: skip

    # From now on every write fails as on a full disk. The session files are written
    # through os.pwrite/os.write (session.json); nothing else in this process calls them.
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    monkeypatch.setattr(os, "write", disk_full)
    for s in range(20, 200):
        bus.publish(make_step(s))  # must never raise
    wait_until(lambda: recorder.status == "stopped", "the recorder to stop")
    recorder.close()
    monkeypatch.undo()  # space is free again

    received = watcher.drain()
    assert [e.step for e in received if isinstance(e, StepEvent)] == list(range(200))
    errors = [e for e in received if isinstance(e, NoticeEvent) and e.level == "error"]
    assert len(errors) == 1 and "Recording stopped" in errors[0].message and "disk is full" in errors[0].message
    assert "conversation goes on" in errors[0].message
    assert recorder.notices == errors and "disk is full" in recorder.stop_reason
    assert [s.name for s in bus.subscribers] == ["conversation"]

    # The final session.json could not be written either: the next listing repairs it.
    session = load_session(session_dir)
    assert session.info.status == "recovered"
    assert [e.step for e in session.steps] == list(range(20))
    np.testing.assert_array_equal(session.user_audio, np.concatenate([user_frame(i) for i in range(20)]))
    np.testing.assert_array_equal(session.agent_audio, np.concatenate([agent_frame(i) for i in range(20)]))
    assert session.warnings == []


@pytest.mark.parametrize("steps", [0, 1])
def test_keep_empty_false_leaves_no_folder_only_when_nothing_was_recorded(tmp_path, steps):
    # A served conversation whose client left before its first step: nothing to keep. One step is
    # audio in both tracks, and is kept like any other recording.
    bus = EventBus()
    recorder = start_recorder(tmp_path, bus, keep_empty=False)
    bus.publish(NoticeEvent("info", "conditioning", wall_time=1.0))
    for i in range(steps):
        bus.publish(make_step(i))
    recorder.close()
    assert recorder.discarded == (steps == 0)
    if steps == 0:
        assert list(tmp_path.iterdir()) == []
    else:
        [summary] = list_sessions(tmp_path)
        assert summary.status == "ok" and load_session(summary.path).frames == 1


def test_session_folder_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(SessionError, match="not-a-folder.*--sessions-dir"):
        new_session_dir(blocker, datetime(2026, 1, 1))
    bus = EventBus()
    with pytest.raises(RecordingStopped, match="not-a-folder.*--sessions-dir"):
        Recorder(bus, blocker / "session", META)
    assert bus.subscribers == ()


def test_permission_denied_folder_is_a_clear_error(tmp_path, monkeypatch):
    session_dir = new_session_dir(tmp_path, datetime(2026, 1, 1))
    real_open = os.open

    def denied(path, flags, mode=0o777, *args, **kwargs):
        if Path(path).parent == session_dir:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    bus = EventBus()
    with pytest.raises(RecordingStopped, match="permission denied"):
        Recorder(bus, session_dir, META)
    assert bus.subscribers == ()


CHILD = """
import sys, time
from ppchat.engine.events import EventBus, StepEvent
from ppchat.sessions.recorder import Recorder
from ppchat.sessions.schema import SessionMeta

{frames}
bus = EventBus()
recorder = Recorder(bus, sys.argv[1], SessionMeta(voice="crash"))
print("recording", flush=True)
step = 0
while True:
    bus.publish(StepEvent(step=step, audio_time=step * 0.08, wall_time=time.time(), timings_ms={{"total": 40.0}},
                          text_token=3, user_pcm=user_frame(step), agent_pcm=agent_frame(step)))
    step += 1
    time.sleep(0.01)
"""


def test_kill_9_leaves_a_playable_repairable_session(tmp_path):
    session_dir = new_session_dir(tmp_path, datetime(2026, 11, 25, 3, 0, 0))
    frames = textwrap.dedent(inspect.getsource(user_frame)) + textwrap.dedent(inspect.getsource(agent_frame))
    script = CHILD.format(frames=frames)
    child = subprocess.Popen([sys.executable, "-c", script, str(session_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "recording"
        one_second = 24000 * 4
        wait_until(lambda: read_wav_layout(session_dir / "agent.wav").data_bytes >= one_second, "a flush of >= 1 s of audio")
        time.sleep(0.7)  # die somewhere after (or during) a later flush

        # While it runs, the session is live: loading shows it without repairing anything.
        live = load_session(session_dir)
        assert live.status == "live" and any("still being recorded" in w for w in live.warnings)
        with pytest.raises(SessionError, match="still being recorded"):
            from ppchat.sessions.repair import repair_session

            repair_session(session_dir)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert read_session_info(session_dir).status == "recording"

    for name, frame in (("user.wav", user_frame), ("agent.wav", agent_frame)):
        data, _ = sf.read(session_dir / name, dtype="float32")  # playable as left by the crash
        assert len(data) >= 24000
        expected = np.concatenate([frame(i) for i in range(-(-len(data) // FRAME))])[: len(data)]
        np.testing.assert_array_equal(data, expected)

    [summary] = list_sessions(tmp_path)
    assert summary.status == "recovered"
    session = load_session(session_dir)
    assert session.info.status == "recovered" and session.warnings == []
    contents = read_jsonl(session_dir / "steps.jsonl")
    assert not contents.torn and contents.bad_lines == []
    steps = [e.step for e in session.steps]
    assert steps == list(range(len(steps))) and len(steps) >= 13
    assert session.info.stats.steps == len(steps)
    assert session.info.duration_s == pytest.approx(len(steps) * 0.08)
    for track, frame in ((session.user_audio, user_frame), (session.agent_audio, agent_frame)):
        assert len(track) >= len(steps) * FRAME  # audio is flushed before the log
        expected = np.concatenate([frame(i) for i in range(-(-len(track) // FRAME))])[: len(track)]
        np.testing.assert_array_equal(track, expected)
