"""The replay screen and the session browser, on sessions recorded by the real Recorder."""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ppchat.engine.events import EventBus, StepEvent
from ppchat.sessions.recorder import Recorder
from ppchat.sessions.schema import SessionMeta
from ppchat.sessions.store import load_session
from ppchat.tui.app import PPChatApp
from ppchat.tui.replay import ReplayApp, ReplayScreen, seek_frame
from ppchat.tui.session_browser import SessionBrowser
from ppchat.tui.widgets.latency import LatencyPanel
from ppchat.tui.widgets.monologue import Monologue

STEPS = 100
WORDS = {10: " Good", 12: " morning", 14: "!", 60: " Bye"}


def record_session(root: Path, name: str, voice: str = "NATF2") -> Path:
    """100 steps: a greeting at 0.8 s, a goodbye at 4.8 s, one late step."""
    session_dir = root / name
    session_dir.mkdir(parents=True)
    bus = EventBus()
    with Recorder(bus, session_dir, SessionMeta(model_id="demo-tiny", voice=voice, role_prompt="You are a test.")):
        for i in range(STEPS):
            token, piece = (100 + i, WORDS[i]) if i in WORDS else (3, None)
            pcm = np.full(1920, 0.25 if 10 <= i < 20 else 0.0, np.float32)
            bus.publish(StepEvent(i, i * 0.08, 0.0, {"total": 90.0 if i == 50 else 30.0}, token, piece,
                                  out_rms=0.25 if 10 <= i < 20 else 0.0, out_peak=0.25 if 10 <= i < 20 else 0.0,
                                  late=i == 50, user_pcm=np.zeros(1920, np.float32), agent_pcm=pcm))
    return session_dir


class IdleConversation:
    """A controller that is never started: enough to open the session browser."""

    running = False
    info = {"model": "demo", "voice": "NATF2", "prompt": "p", "prompt_name": "p", "session_dir": None}

    def __init__(self) -> None:
        self.bus = EventBus()

    def stop(self) -> None:
        pass

    def set_mute(self, on: bool) -> None:
        raise AssertionError("mute must not reach the controller from the session browser")

    def voices(self) -> list[str]:
        return ["NATF2"]

    def prompts(self) -> dict[str, str]:
        return {"p": "p"}


def screen_text(app) -> str:
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def settle(pilot, seconds: float = 0.3) -> None:
    await pilot.pause(seconds)


def test_replay_plays_the_whole_session_into_the_live_view(tmp_path):
    session = load_session(record_session(tmp_path, "2025-01-01T10-00-00_aaaa"))

    async def go():
        app = ReplayApp(session, speed=math.inf)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, ReplayScreen) and screen.ended
            assert screen.query_one(Monologue).transcript.plain_lines() == ["00:00 Good morning!", "00:04 Bye"]
            stats = screen.query_one(LatencyPanel).stats
            assert stats.steps == STEPS and stats.late == 1 and stats.max() == 90.0
            assert screen.position == pytest.approx(STEPS * 0.08)
            await pilot.press("q")
            await settle(pilot)
        assert app.return_code == 0

    asyncio.run(go())


def test_seek_while_paused_redraws_history_up_to_the_new_position(tmp_path):
    session = load_session(record_session(tmp_path, "2025-01-01T10-00-00_bbbb"))

    async def go():
        app = ReplayApp(session, speed=1.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            await pilot.press("space")  # pause
            await pilot.pause()
            assert not screen.playing
            screen._play_from(25, autoplay=False)
            assert screen.query_one(LatencyPanel).stats.steps == 25  # steps 0..24 lie before frame 25 (2.0 s)
            await pilot.press("right")  # to the 5 s mark, still paused
            await settle(pilot)
            # 5.0 s falls inside step 62 (4.96-5.04 s): the view snaps to the next frame, step 63.
            assert not screen.playing and screen.frame == 63
            assert screen.query_one(LatencyPanel).stats.steps == 63
            await pilot.press("left", "left")  # back to 0 s, then clamped at the start
            await settle(pilot)
            assert screen.position == 0.0 and screen.query_one(LatencyPanel).stats.steps == 0

    asyncio.run(go())


def test_seeks_land_on_the_5_second_marks_without_drifting():
    # Frame k holds 5 s x n when it is the first frame starting at or after it: ceil(62.5 n).
    marks = [0, 63, 125, 188, 250, 313, 375]
    frame, forward = 0, []
    for _ in range(6):
        frame = seek_frame(frame, 1)
        forward.append(frame)
    assert forward == marks[1:]
    back = []
    for _ in range(6):
        frame = seek_frame(frame, -1)
        back.append(frame)
    assert back == marks[-2::-1]
    # From between the marks: forward to the next one, back to the one before.
    assert seek_frame(100, 1) == 125 and seek_frame(100, -1) == 63 and seek_frame(0, -1) == 0
    assert all(int(f * 0.08) % 5 == 0 for f in marks)  # the clock shows 00:05, 00:10, ...


def test_speed_keys_step_through_the_speed_ladder(tmp_path):
    session = load_session(record_session(tmp_path, "2025-01-01T10-00-00_cccc"))

    async def go():
        app = ReplayApp(session, speed=1.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            await pilot.press("plus", "plus")
            assert screen.speed == 4.0
            await pilot.press("minus", "minus", "minus", "minus", "minus")
            assert screen.speed == 0.25  # the slowest

    asyncio.run(go())


def test_session_browser_lists_sessions_and_opens_a_replay(tmp_path):
    record_session(tmp_path, "2025-01-01T10-00-00_aaaa", voice="NATM1")
    record_session(tmp_path, "2025-01-02T10-00-00_bbbb", voice="NATF0")

    async def go():
        app = PPChatApp(IdleConversation(), autostart=False, sessions_root=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("s")
            await settle(pilot)
            assert isinstance(app.screen, SessionBrowser)
            rows = [line for line in screen_text(app).splitlines() if "00:08" in line]
            assert len(rows) == 2 and "NATF0" in rows[0] and "NATM1" in rows[1]  # newest first
            await pilot.press("m")  # conversation keys are off here
            assert app.muted is False
            await pilot.press("enter")
            await settle(pilot)
            replay = app.screen
            assert isinstance(replay, ReplayScreen) and replay.session.info.meta.voice == "NATF0"
            # Live events keep going to the console's own view, never into the replay's.
            await pilot.press("space")  # pause the replay
            replayed = replay.query_one(LatencyPanel).stats.steps
            for n in range(5):
                app.conversation.bus.publish(StepEvent(n, n * 0.08, 0.0, {"total": 500.0}))
            await settle(pilot)
            assert replay.query_one(LatencyPanel).stats.steps == replayed and replay.query_one(LatencyPanel).stats.max() != 500.0
            assert app.live.latency.stats.steps == 5
            await pilot.press("escape", "escape")
            await settle(pilot)
            assert len(app.screen_stack) == 1

    asyncio.run(go())


def silent_step(i: int) -> StepEvent:
    silence = np.zeros(1920, np.float32)
    return StepEvent(i, i * 0.08, 0.0, {"total": 30.0}, user_pcm=silence, agent_pcm=silence)


def table_rows(lines: list[str]) -> list[str]:
    """The session browser's rows: the non-empty lines under the header, above the footer."""
    start = next(i for i, line in enumerate(lines) if "started" in line and "length" in line) + 1
    return [line for line in lines[start:-1] if line.strip()]


def test_session_browser_is_a_table_with_one_line_per_session_and_a_growing_live_row(tmp_path):
    record_session(tmp_path, "2025-01-01T10-00-00_aaaa", voice="NATM1")
    long_prompt = "You are a patient teacher who explains everything twice, slowly and kindly.\nSecond line."
    respond_dir = tmp_path / "2025-01-02T10-00-00_bbbb"
    respond_dir.mkdir()
    with Recorder(EventBus(), respond_dir, SessionMeta(model_id="demo", voice="NATF0", role_prompt=long_prompt, kind="respond")):
        pass
    live_dir = tmp_path / "2025-01-03T10-00-00_cccc"
    live_dir.mkdir()
    bus = EventBus()
    recorder = Recorder(bus, live_dir, SessionMeta(model_id="demo", voice="VARF1", role_prompt="Live."), flush_interval=0.05)
    recorder.__enter__()
    try:
        async def go():
            app = PPChatApp(IdleConversation(), autostart=False, sessions_root=tmp_path)
            async with app.run_test(size=(80, 24)) as pilot:
                for i in range(25):
                    bus.publish(silent_step(i))
                await pilot.pause(0.3)
                await pilot.press("s")
                await settle(pilot)
                text = screen_text(app).splitlines()
                header = next(line for line in text if "started" in line and "length" in line)
                assert all(h in header for h in ("length", "kind", "voice", "p95 ms", "status", "prompt"))
                rows = table_rows(text)
                assert len(rows) == 3  # one line each, however long the prompt
                assert "VARF1" in rows[0] and "live" in rows[0] and "00:02" in rows[0]  # 25 frames = 2.0 s so far
                assert "respond" in rows[1] and "You are a patient" in rows[1] and rows[1].rstrip().endswith("…")
                assert "talk" in rows[2] and "00:08" in rows[2]
                for i in range(25, 50):
                    bus.publish(silent_step(i))
                await pilot.pause(1.5)  # the recorder flushes; the browser looks once a second
                rows = table_rows(screen_text(app).splitlines())
                assert "00:04" in rows[0]  # 50 frames
                await pilot.press("o")  # sort by length, longest first
                await settle(pilot)
                rows = table_rows(screen_text(app).splitlines())
                assert "NATM1" in rows[0] and "sorted by length ↓" in screen_text(app)

        asyncio.run(go())
    finally:
        recorder.close()


def test_session_browser_shows_a_voice_file_by_its_name_and_keeps_every_column_at_80(tmp_path):
    """A session with a voice file listed its full path: p95, status and prompt went off screen."""
    record_session(tmp_path, "2025-01-01T10-00-00_aaaa", voice="/home/ann/recordings/grandpa_reading_the_news_2019.wav")
    record_session(tmp_path, "2025-01-02T10-00-00_bbbb", voice="NATM1")

    async def go():
        app = PPChatApp(IdleConversation(), autostart=False, sessions_root=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("s")
            await settle(pilot)
            text = screen_text(app).splitlines()
            header = next(line for line in text if "started" in line and "length" in line)
            assert all(h in header for h in ("voice", "p95 ms", "status", "prompt"))
            rows = table_rows(text)
            assert "NATM1" in rows[0]
            assert "grandpa_reading…" in rows[1] and "recordings" not in rows[1]
            assert "ok" in rows[1] and "You are a test." in rows[1]

    asyncio.run(go())
