"""Recorded sessions after the fact: listing, finding, damage and repair, transcript, replay, export, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ppchat.cli import main
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.transcript import Transcript, Utterance, format_clock, transcript
from ppchat.errors import SessionError
from ppchat.sessions.export import export, offline_text_frames
from ppchat.sessions.recorder import start_recording
from ppchat.sessions.repair import repair_session
from ppchat.sessions.replay import play
from ppchat.sessions.schema import SessionMeta
from ppchat.sessions.store import (
    default_sessions_root,
    list_sessions,
    load_session,
    new_session_dir,
    resolve_session,
)

FRAME = 1920
STEPS = 60
# step -> (token, piece). 3 = PAD, 0 = EPAD. "Hello, world" then a 2.48 s pause, then "Again".
TEXT = {4: (0, None), 5: (1000, "▁Hello"), 6: (1001, ","), 8: (1002, "▁world"), 39: (0, None), 40: (1003, "▁Again")}


def user_frame(step: int) -> np.ndarray:
    return np.full(FRAME, step / 100, dtype=np.float32)


def agent_frame(step: int) -> np.ndarray:
    return np.linspace(-1, 1, FRAME, dtype=np.float32) * (step % 7) / 7


PROMPT = "You are a wise and friendly teacher. Answer questions or provide advice."


def record(root: Path, voice: str = "NATF2") -> Path:
    bus = EventBus()
    recorder = start_recording(bus, root, SessionMeta(voice=voice, role_prompt=PROMPT))
    for s in range(STEPS):
        token, piece = TEXT.get(s, (3, None))
        bus.publish(StepEvent(step=s, audio_time=s * 0.08, wall_time=0.0, timings_ms={"total": 50.0}, text_token=token,
                              text_piece=piece, user_pcm=user_frame(s), agent_pcm=agent_frame(s)))  # fmt: skip
        if s == 30:
            bus.publish(NoticeEvent("info", "halfway"))
    recorder.close()
    return recorder.session_dir


@pytest.fixture
def session_dir(tmp_path) -> Path:
    return record(tmp_path / "sessions")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def set_json(path: Path, **changes) -> None:
    data = json.loads((path / "session.json").read_text())
    data.update(changes)
    (path / "session.json").write_text(json.dumps(data))


# --- store -------------------------------------------------------------------------------


def test_default_root_follows_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_sessions_root() == tmp_path / "ppchat" / "sessions"


def test_new_session_dirs_are_unique_and_sortable(tmp_path):
    t = datetime(2026, 11, 25, 1, 57, 4)
    a, b = new_session_dir(tmp_path, t), new_session_dir(tmp_path, t)
    c = new_session_dir(tmp_path, datetime(2026, 11, 25, 10, 0, 0))
    assert a != b and a.is_dir() and b.is_dir() and not any(a.iterdir())
    for path in (a, b):
        assert re.fullmatch(r"2026-11-25T01-57-04_[0-9a-f]{4}", path.name)
    assert sorted([c.name, a.name]) == [a.name, c.name]


def test_resolve_session_by_path_prefix_and_last(tmp_path):
    root = tmp_path / "sessions"
    first, second = (new_session_dir(root, datetime(2026, 11, day, 9, 0, 0)) for day in (24, 25))
    for path in (first, second):
        (path / "session.json").write_text("{}")
    assert resolve_session(str(first), root) == first
    assert resolve_session("last", root) == second
    assert resolve_session(first.name, root) == first
    assert resolve_session("2026-11-25", root) == second
    with pytest.raises(SessionError, match="matches 2 sessions"):
        resolve_session("2026-11-2", root)
    with pytest.raises(SessionError, match="no session 'nope'"):
        resolve_session("nope", root)
    with pytest.raises(SessionError, match="no sessions"):
        resolve_session("last", tmp_path / "empty")


def test_list_ignores_unrelated_folders_and_missing_root(tmp_path, session_dir):
    (session_dir.parent / "notes").mkdir()
    assert [s.path for s in list_sessions(session_dir.parent)] == [session_dir]
    assert list_sessions(tmp_path / "nothing-here") == []


# --- damage and repair ----------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "{not json", "[]", '{"status": "complete"}'])
def test_unusable_session_json_is_a_clear_error_and_repair_rebuilds_it(session_dir, content):
    if content is None:
        (session_dir / "session.json").unlink()
    else:
        (session_dir / "session.json").write_text(content)
    with pytest.raises(SessionError, match=r"session\.json"):
        load_session(session_dir)
    [summary] = list_sessions(session_dir.parent)
    assert summary.status == "corrupt" and "session.json" in summary.warnings[0]

    report = repair_session(session_dir)
    assert any("rebuilt" in a for a in report.actions) and report.problems == []
    session = load_session(session_dir)
    assert session.info.status == "recovered" and session.status == "recovered"
    assert session.info.duration_s == pytest.approx(STEPS * 0.08) and session.info.stats.steps == STEPS
    assert session.info.started.strftime("%Y-%m-%dT%H-%M-%S") == session_dir.name[:19]
    np.testing.assert_array_equal(session.user_audio, np.concatenate([user_frame(s) for s in range(STEPS)]))


def test_newer_format_asks_for_an_upgrade(session_dir):
    set_json(session_dir, format_version=3)
    with pytest.raises(SessionError, match="upgrade ppchat"):
        load_session(session_dir)


def test_garbage_wav_loads_best_effort_with_a_warning(session_dir):
    (session_dir / "user.wav").write_bytes(os.urandom(5000))
    session = load_session(session_dir)
    assert session.status == "partial"
    assert any("user.wav" in w for w in session.warnings)
    assert len(session.user_audio) == 0
    np.testing.assert_array_equal(session.agent_audio, np.concatenate([agent_frame(s) for s in range(STEPS)]))
    assert transcript(session.steps)[0].text == "Hello, world"
    report = repair_session(session_dir)
    assert any("user.wav" in p for p in report.problems)


def test_torn_log_line_is_reported_then_repaired(session_dir):
    with open(session_dir / "steps.jsonl", "ab") as f:
        f.write(b'{"step": 60, "t": 4.8, "ms": {"tot')
    session = load_session(session_dir)
    assert len(session.steps) == STEPS and session.status == "partial"
    assert any("incomplete line" in w for w in session.warnings)
    report = repair_session(session_dir)
    assert any("incomplete last line" in a for a in report.actions)
    assert (session_dir / "steps.jsonl").read_bytes().endswith(b"}\n")
    assert load_session(session_dir).warnings == []


def test_damaged_log_lines_are_skipped_with_a_warning(session_dir):
    lines = (session_dir / "steps.jsonl").read_bytes().split(b"\n")
    lines[3] = b"\x00\x01garbage"
    lines[4] = b'{"kind": "mystery"}'
    (session_dir / "steps.jsonl").write_bytes(b"\n".join(lines))
    session = load_session(session_dir)
    assert any("2 damaged line" in w for w in session.warnings)
    assert len(session.steps) == STEPS - 2


def test_wav_header_behind_file_length_is_fixed_on_repair(session_dir):
    extra = np.full(500, 0.5, dtype=np.float32)
    with open(session_dir / "agent.wav", "ab") as f:  # samples written, header not yet patched
        f.write(extra.tobytes())
    report = repair_session(session_dir)
    assert any(a.startswith("agent.wav: header fixed") for a in report.actions)
    data, _ = sf.read(session_dir / "agent.wav", dtype="float32")
    np.testing.assert_array_equal(data[-500:], extra)
    assert len(data) == STEPS * FRAME + 500


def test_session_of_a_dead_process_is_recovered_on_list(session_dir):
    set_json(session_dir, status="recording", pid=dead_pid(), duration_s=0, stats={})
    [summary] = list_sessions(session_dir.parent)
    assert summary.status == "recovered"
    assert summary.duration_s == pytest.approx(STEPS * 0.08) and summary.mean_ms == pytest.approx(50.0)
    assert summary.voice == "NATF2"  # what session.json knew survives


def test_session_of_a_live_process_is_left_alone(session_dir):
    set_json(session_dir, status="recording", pid=os.getppid())
    assert list_sessions(session_dir.parent)[0].status == "live"
    session = load_session(session_dir)
    assert session.status == "live" and len(session.steps) == STEPS
    with pytest.raises(SessionError, match="still being recorded"):
        repair_session(session_dir)
    assert json.loads((session_dir / "session.json").read_text())["status"] == "recording"


def test_repair_refuses_a_folder_that_is_not_a_session(tmp_path):
    with pytest.raises(SessionError, match="not a ppchat session"):
        repair_session(tmp_path)


# --- transcript and replay -------------------------------------------------------------------


def test_transcript_groups_pieces_into_utterances_by_pauses(session_dir):
    session = load_session(session_dir)
    assert transcript(session.steps) == [
        Utterance(pytest.approx(5 * 0.08), pytest.approx(9 * 0.08), "Hello, world"),
        Utterance(pytest.approx(40 * 0.08), pytest.approx(41 * 0.08), "Again"),
    ]
    # A 31-frame (2.48 s) pause only splits when it is at least pause_s long.
    assert [u.text for u in transcript(session.steps, pause_s=2.5)] == ["Hello, world Again"]


def test_format_clock():
    assert format_clock(0) == "00:00.0"
    assert format_clock(65.44) == "01:05.4"
    assert format_clock(3725.3) == "1:02:05.3"


def test_play_paces_events_and_attaches_audio(session_dir):
    session = load_session(session_dir)
    now = [100.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    events = list(play(session, speed=2.0, start=2.0, clock=lambda: now[0], sleep=sleep))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(25, STEPS))  # 2.0 s = step 25
    assert pytest.approx(sum(sleeps)) == (STEPS - 1 - 25) * 0.08 / 2  # the last step is due at (4.72 - 2.0) / 2
    notice = next(i for i, e in enumerate(events) if isinstance(e, NoticeEvent))
    assert events[notice].message == "halfway" and events[notice + 1].step == 31  # logged before step 31
    for e in steps:
        np.testing.assert_array_equal(e.user_pcm, user_frame(e.step))
        np.testing.assert_array_equal(e.agent_pcm, agent_frame(e.step))
    assert len(list(play(session, speed=float("inf"), sleep=lambda s: pytest.fail("slept")))) == STEPS + 1
    with pytest.raises(ValueError):
        next(play(session, speed=0))


# --- export ------------------------------------------------------------------------------------


def test_export_writes_all_formats(session_dir, tmp_path):
    session = load_session(session_dir)
    paths = export(session, tmp_path / "out")
    assert [p.name for p in paths] == [f"{session.name}.{ext}" for ext in ("txt", "srt", "wav", "json")]
    txt, srt, wav, js = paths
    assert txt.read_text() == "[00:00.4] Hello, world\n[00:03.2] Again\n"
    assert srt.read_text() == "1\n00:00:00,400 --> 00:00:00,720\nHello, world\n\n2\n00:00:03,200 --> 00:00:03,280\nAgain\n\n"
    stereo, rate = sf.read(wav, dtype="float32")
    assert rate == 24000 and stereo.shape == (STEPS * FRAME, 2)
    np.testing.assert_array_equal(stereo[:, 0], np.concatenate([agent_frame(s) for s in range(STEPS)]))  # left = agent
    np.testing.assert_array_equal(stereo[:, 1], np.concatenate([user_frame(s) for s in range(STEPS)]))  # right = user
    doc = json.loads(js.read_text(encoding="utf-8"))
    frames = doc["text"]
    assert doc["dialogue"] == [{"speaker": "agent", "start": 0.4, "end": 0.72, "text": "Hello, world"},
                               {"speaker": "agent", "start": 3.2, "end": 3.28, "text": "Again"}]  # fmt: skip
    assert len(frames) == STEPS
    assert frames[4] == "EPAD" and frames[5] == " Hello" and frames[6] == "," and frames[7] == "PAD" and frames[40] == " Again"
    assert set(frames) == {"PAD", "EPAD", " Hello", ",", " world", " Again"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_export_pads_a_short_track_and_unknown_format_is_an_error(session_dir, tmp_path):
    with open(session_dir / "user.wav", "r+b") as f:
        f.truncate(58 + 4 * FRAME * 10)
    repair_session(session_dir)
    session = load_session(session_dir)
    [wav] = export(session, tmp_path, ("wav",))
    stereo, _ = sf.read(wav, dtype="float32")
    assert stereo.shape == (STEPS * FRAME, 2) and not stereo[10 * FRAME :, 1].any()
    assert len(offline_text_frames(session)) == STEPS
    with pytest.raises(SessionError, match="mp3"):
        export(session, tmp_path, ("mp3",))


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_lists_sessions(session_dir, capsys):
    root = str(session_dir.parent)
    assert main(["sessions", "--sessions-dir", root]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["SESSION", "LENGTH", "VOICE", "MEAN", "ms", "P95", "ms", "STATUS", "PROMPT"]
    assert row.split()[:6] == [session_dir.name, "00:04.8", "NATF2", "50.0", "50.0", "ok"]
    assert row.endswith("  You are a wise and friendly teacher. An…")  # cut to 40 characters

    assert main(["sessions", "--json", "--sessions-dir", root]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["name"] == session_dir.name and entry["status"] == "ok" and entry["duration_s"] == pytest.approx(4.8)


def test_cli_lists_a_voice_file_by_its_name(tmp_path, capsys):
    """Its full path (often inside another session) made the lines half as long again."""
    root = tmp_path / "sessions"
    record(root, voice="/home/ann/recordings/grandpa.wav")
    assert main(["sessions", "--sessions-dir", str(root)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert row.split()[2] == "grandpa.wav" and "/home/ann" not in row


def test_cli_empty_listing(tmp_path, capsys):
    assert main(["sessions", "--sessions-dir", str(tmp_path)]) == 0
    assert "no sessions" in capsys.readouterr().out


def test_cli_replay_no_tui_prints_transcript(session_dir, capsys):
    assert main(["replay", session_dir.name[:-2], "--no-tui", "--sessions-dir", str(session_dir.parent)]) == 0
    assert capsys.readouterr().out == "[00:00.4] Hello, world\n[00:03.2] Again\n"


def test_cli_replay_opens_the_tui_screen(session_dir, monkeypatch):
    opened = []
    monkeypatch.setitem(sys.modules, "ppchat.tui.replay", types.SimpleNamespace(run_replay=lambda s: opened.append(s) or 0))
    assert main(["replay", "last", "--sessions-dir", str(session_dir.parent)]) == 0
    assert [s.path for s in opened] == [session_dir]


def test_cli_export_selected_formats(session_dir, tmp_path, capsys):
    out = tmp_path / "exports"
    assert main(["export", "last", "--out", str(out), "--format", "txt, json", "--sessions-dir", str(session_dir.parent)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{session_dir.name}.json", f"{session_dir.name}.txt"]
    assert capsys.readouterr().out.split() == [str(out / f"{session_dir.name}.txt"), str(out / f"{session_dir.name}.json")]


def test_cli_repair_before_or_after_options(session_dir, capsys):
    root = str(session_dir.parent)
    (session_dir / "session.json").unlink()
    assert main(["sessions", "--sessions-dir", root, "repair", "last"]) == 0
    assert "session.json: rebuilt" in capsys.readouterr().out
    assert main(["sessions", "repair", "last", "--sessions-dir", root]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    (session_dir / "agent.wav").write_bytes(b"junk")
    assert main(["sessions", "repair", session_dir.name, "--sessions-dir", root]) == 1
    assert "agent.wav" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "nope", "--no-tui"], "no session 'nope'"),
        (["export", "last", "--format", "mp3"], "unknown export format mp3"),
        (["sessions", "repair", "nope"], "no session 'nope'"),
    ],
)
def test_cli_bad_input_is_one_line_error(session_dir, capsys, argv, message):
    assert main([*argv, "--sessions-dir", str(session_dir.parent)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppchat: error: ") and message in err and "Traceback" not in err


def test_cli_corrupt_session_is_an_error_not_a_traceback(session_dir, capsys):
    (session_dir / "session.json").write_text("{")
    assert main(["replay", "last", "--no-tui", "--sessions-dir", str(session_dir.parent)]) == 2
    assert "ppchat sessions repair" in capsys.readouterr().err


def test_console_and_replay_split_turns_by_the_same_rule():
    # Steps 0 and 30 speak; the log has nothing in between (e.g. steps lost by the recorder).
    spoken = ((0, "▁Hi"), (1, "!"), (30, "▁Again"))
    steps = [StepEvent(step=s, audio_time=s * 0.08, wall_time=0.0, timings_ms={}, text_token=17, text_piece=p) for s, p in spoken]
    live = Transcript(turn_gap_steps=13)
    for event in steps:
        live.add(event)
    assert [(e.first_step, e.text) for e in live.entries] == [(0, "Hi!"), (30, "Again")]
    assert [u.text for u in transcript(steps, pause_s=1.0)] == ["Hi!", "Again"]
    assert [u.text for u in transcript(steps, pause_s=2.4)] == ["Hi! Again"]  # 28 silent steps < 30
