"""Recording edge cases: a disk that fills between the tracks, a recording that can't start,
sessions with nothing in them and `ppchat sessions clean` (issue 16.9, 16.10, 16.13)."""

from __future__ import annotations

import errno
import json
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ppchat.cli import main
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.errors import SessionError
from ppchat.sessions.files import RecordingStopped
from ppchat.sessions.recorder import Recorder, start_recording
from ppchat.sessions.schema import SessionMeta
from ppchat.sessions.store import list_sessions, load_session, new_session_dir

FRAME = 1920
META = SessionMeta(voice="NATF2", role_prompt="Be brief.")


def step(s: int) -> StepEvent:
    return StepEvent(step=s, audio_time=s * 0.08, wall_time=1000.0 + s * 0.08, timings_ms={"total": 40.0 + s % 9},
                     text_token=3, user_pcm=np.full(FRAME, s / 1000, np.float32),
                     agent_pcm=np.full(FRAME, -s / 1000, np.float32), late=s % 10 == 0)  # fmt: skip


def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    """Liveness wait for the recorder thread (not a speed check: the bound is generous)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def fd_name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.parametrize("full_file", ["agent.wav", "steps.jsonl"])
def test_a_disk_that_fills_between_the_files_leaves_them_cut_at_the_same_step(tmp_path, monkeypatch, full_file):
    """The user track's flush gets through, then the disk is full for the next file (issue 16.9)."""
    bus = EventBus()
    recorder = Recorder(bus, new_session_dir(tmp_path, datetime(2026, 1, 1)), META, flush_interval=0.05)
    session_dir = recorder.session_dir
    for s in range(25):
        bus.publish(step(s))
    wait_until(lambda: len((session_dir / "steps.jsonl").read_text().splitlines()) == 25, "25 steps on disk")

    real_pwrite = os.pwrite

    def fills_up(fd, data, offset):
        if fd_name(fd).endswith(full_file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", fills_up)
    for s in range(25, 60):
        bus.publish(step(s))
    wait_until(lambda: recorder.status == "stopped", "the recorder to stop")
    recorder.close()
    monkeypatch.undo()

    session = load_session(session_dir)
    steps = len(session.steps)
    assert steps == 25
    assert len(session.user_audio) == len(session.agent_audio) == steps * FRAME
    info = session.info
    assert info.status == "stopped" and "disk is full" in info.stop_reason
    assert info.stats.steps == steps and info.duration_s == pytest.approx(steps * 0.08)
    assert info.stats.late_frames == 3  # steps 0, 10, 20: the statistics cover exactly what was kept
    assert any(w.startswith("the recording stopped early, after 2.00 s") and "disk is full" in w for w in session.warnings)
    np.testing.assert_array_equal(session.user_audio[-FRAME:], np.full(FRAME, 24 / 1000, np.float32))


def test_a_recording_that_cannot_start_leaves_nothing(tmp_path, monkeypatch):
    """The disk is already full: the WAV headers or session.json can't be written (issue 16.10)."""
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    bus = EventBus()
    with pytest.raises(RecordingStopped, match="disk is full"):
        start_recording(bus, tmp_path, META)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [] and bus.subscribers == ()
    assert list_sessions(tmp_path) == []


def make_failed(root: Path) -> Path:
    """What a recording that could not start left before 16.10: a 0-byte user.wav, nothing else."""
    path = new_session_dir(root, datetime(2026, 1, 2))
    (path / "user.wav").write_bytes(b"")
    return path


def make_empty(root: Path) -> Path:
    """A session killed before its first step: repaired on listing into a 0-step one."""
    bus = EventBus()
    recorder = start_recording(bus, root, META)
    recorder.close()
    return recorder.session_dir


def make_ok(root: Path) -> Path:
    bus = EventBus()
    recorder = start_recording(bus, root, META)
    for s in range(5):
        bus.publish(step(s))
    recorder.close()
    return recorder.session_dir


def test_failed_and_empty_sessions_are_listed_as_such_with_a_hint_that_works(tmp_path, capsys):
    failed, empty, ok = make_failed(tmp_path), make_empty(tmp_path), make_ok(tmp_path)
    status = {s.path: s for s in list_sessions(tmp_path)}
    assert status[failed].status == "failed" and "sessions clean" in status[failed].warnings[0]
    assert "repair" not in status[failed].warnings[0]
    assert status[empty].status == "empty" and "sessions clean" in status[empty].warnings[0]
    assert status[ok].status == "ok"
    with pytest.raises(SessionError, match="nothing was recorded.*sessions clean"):
        load_session(failed)


def test_sessions_clean_removes_failed_and_empty_ones_after_confirmation(tmp_path, capsys, monkeypatch):
    failed, empty, ok = make_failed(tmp_path), make_empty(tmp_path), make_ok(tmp_path)
    (failed / "notes.txt").write_text("mine")  # not a session file: clean must keep it (and the folder)

    monkeypatch.setattr("sys.stdin", _Answer("n\n"))
    assert main(["sessions", "clean", "--sessions-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert failed.name in out and empty.name in out and ok.name not in out
    assert failed.exists() and empty.exists()

    monkeypatch.setattr("sys.stdin", _Answer("y\n"))
    assert main(["sessions", "clean", "--sessions-dir", str(tmp_path)]) == 0
    assert not empty.exists() and ok.exists()
    assert sorted(p.name for p in failed.iterdir()) == ["notes.txt"]
    assert "kept" in capsys.readouterr().out
    assert [s.path for s in list_sessions(tmp_path)] == [ok]
    assert main(["sessions", "clean", "--yes", "--sessions-dir", str(tmp_path)]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_sessions_clean_without_a_terminal_needs_yes(tmp_path, capsys, monkeypatch):
    empty = make_empty(tmp_path)
    monkeypatch.setattr("sys.stdin", _Answer("", tty=False))
    assert main(["sessions", "clean", "--sessions-dir", str(tmp_path)]) == 2
    assert "--yes" in capsys.readouterr().err and empty.exists()
    assert main(["sessions", "clean", "--yes", "--sessions-dir", str(tmp_path)]) == 0
    assert not empty.exists()


class _Answer:
    def __init__(self, text: str, tty: bool = True):
        self._lines = text.splitlines(keepends=True)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""


def test_a_live_session_is_never_cleaned(tmp_path, capsys):
    bus = EventBus()
    recorder = start_recording(bus, tmp_path, META)  # recording, no step yet
    try:
        assert [s.status for s in list_sessions(tmp_path)] == ["live"]
        assert main(["sessions", "clean", "--yes", "--sessions-dir", str(tmp_path)]) == 0
        assert recorder.session_dir.exists()
    finally:
        recorder.close()


def test_the_full_disk_notice_reaches_the_user_once(tmp_path, monkeypatch, capfd):
    """Published as a notice (shown by the console or the headless status), not also printed by
    logging's fallback or a stderr log handler (issue 16.13)."""
    import logging

    bus = EventBus()
    recorder = Recorder(bus, new_session_dir(tmp_path, datetime(2026, 1, 1)), META, flush_interval=0.05)
    watcher = bus.subscribe(1000, "ui")
    bus.publish(step(0))

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    stderr_handler = logging.StreamHandler()  # what a CLI log setup adds for warnings
    stderr_handler.setLevel(logging.WARNING)
    logging.getLogger("ppchat").addHandler(stderr_handler)
    try:
        bus.publish(step(1))
        wait_until(lambda: recorder.status == "stopped", "the recorder to stop")
        recorder.close()
    finally:
        logging.getLogger("ppchat").removeHandler(stderr_handler)
        monkeypatch.undo()
    notices = [e for e in watcher.drain() if isinstance(e, NoticeEvent) and e.level == "error"]
    assert len(notices) == 1 and "disk is full" in notices[0].message
    out, err = capfd.readouterr()
    assert "disk is full" not in out + err


def test_ctrl_c_while_closing_does_not_lose_track_of_the_recorder(tmp_path, monkeypatch):
    """CPython < 3.13 marks a thread stopped when Ctrl-C lands inside Thread.join(timeout); a
    second close() then returned before session.json was final (and the process could exit
    with the session still 'recording')."""
    import signal

    from ppchat.sessions import recorder as recorder_module

    real_write = recorder_module.write_session_info

    def slow_write(path, info):
        if info.status != "recording":
            time.sleep(0.6)  # a slow disk, at the final write
        real_write(path, info)

    monkeypatch.setattr(recorder_module, "write_session_info", slow_write)
    bus = EventBus()
    recorder = start_recording(bus, tmp_path, META)
    bus.publish(step(0))

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            recorder.close()
    finally:
        signal.signal(signal.SIGALRM, previous)
    recorder.close()  # the program's own clean-up after the interrupt
    assert json.loads((recorder.session_dir / "session.json").read_text())["status"] == "complete"
