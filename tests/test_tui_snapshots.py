"""Snapshots of every console screen, as SVG (Textual's own screenshots) and as plain text.

Each screen is drawn from a deterministic feed (tests/test_tui_app.scripted_events: speech-like
audio, silence, text with pauses, late frames, a mark, a lost frame; sessions recorded with
fixed times under a fixed folder), so the same code draws the same picture on every machine.
The SVGs under tests/snapshots/ are for people: open one in a browser to review a change. The
test compares the plain text always and the SVG too when this is the Textual version that
drew the committed ones (its version is in tests/snapshots/TEXTUAL_VERSION: another version
renders the same screen with other SVG details). Regenerate with PPCHAT_UPDATE_SNAPSHOTS=1
and review the diff.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import pytest
import textual
from rich.console import Console

from ppchat.engine.events import EventBus, StepEvent
from ppchat.engine.monitor_socket import MonitorStep, level_envelope
from ppchat.sessions.recorder import Recorder
from ppchat.sessions.schema import SessionMeta
from ppchat.sessions.store import load_session
from ppchat.tui.app import PPChatApp
from ppchat.tui.monitor import MonitorApp
from ppchat.tui.replay import ReplayApp
from ppchat.tui.state import UiState
from tests.test_tui_app import PROMPTS, FakeConversation, chatty_events, scripted_events

SNAPSHOTS = Path(__file__).parent / "snapshots"
VERSION_FILE = SNAPSHOTS / "TEXTUAL_VERSION"
UPDATE = bool(os.environ.get("PPCHAT_UPDATE_SNAPSHOTS"))
# Shown on screen (browser, replay's status bar): a folder of this process (other test runs may
# share /tmp), its name always as long, and written into the snapshots as SHOWN.
SESSIONS = Path(f"/tmp/ppchat-snap-{os.getpid():08d}")
SHOWN = "/tmp/ppchat-snap-00000000"


@pytest.fixture(scope="module", autouse=True)
def sessions_folder():
    yield
    shutil.rmtree(SESSIONS, ignore_errors=True)


@pytest.fixture(autouse=True)
def colours(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TEXTUAL_THEME", raising=False)


def plain(app) -> str:
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def screenshot(app, name: str) -> str:
    """Textual's `export_screenshot`, with an id that depends on the name only (Rich's default
    hashes the content, which would differ in every class name when one character does)."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_svg(title=name, unique_id=name.replace("_", "-"))


def check(app, name: str) -> None:
    """Compare the screen with tests/snapshots/<name>.txt and .svg (or write them when updating)."""
    svg, text = screenshot(app, name).replace(str(SESSIONS), SHOWN), plain(app).replace(str(SESSIONS), SHOWN)
    svg_file, text_file = SNAPSHOTS / f"{name}.svg", SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        svg_file.write_text(svg)
        text_file.write_text(text)
        VERSION_FILE.write_text(textual.__version__ + "\n")
        return
    assert text_file.exists(), f"no snapshot {text_file}: run with PPCHAT_UPDATE_SNAPSHOTS=1 and review it"
    assert text == text_file.read_text(), f"{name}: the screen changed (PPCHAT_UPDATE_SNAPSHOTS=1 to accept)"
    if VERSION_FILE.read_text().strip() == textual.__version__:
        assert svg == svg_file.read_text(), f"{name}.svg: colours or styles changed (PPCHAT_UPDATE_SNAPSHOTS=1 to accept)"


async def settle(pilot, seconds: float = 0.3) -> None:
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def live_console(pilot, conv: FakeConversation) -> None:
    await settle(pilot)
    for ev in scripted_events():
        conv.bus.publish(ev)
    await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (120, 40), (160, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen(size):
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=size) as pilot:
            await live_console(pilot, conv)
            check(app, f"main_{size[0]}x{size[1]}")

    asyncio.run(go())


def test_main_screen_scrolled_back_says_new_text_is_below():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            for ev in chatty_events(60.0):
                conv.bus.publish(ev)
            await settle(pilot)
            app.live.monologue.focus()
            await pilot.press("home")
            await settle(pilot)
            check(app, "main_scrolled_80x24")

    asyncio.run(go())


@pytest.mark.parametrize("key, name", [("v", "voice_picker"), ("p", "prompt_picker"), ("question_mark", "help")])
def test_modal_screens(key, name):
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await live_console(pilot, conv)
            await pilot.press(key)
            await settle(pilot)
            for area in app.screen.query("TextArea, Input"):
                area.cursor_blink = False
            await settle(pilot, 0.1)
            check(app, f"{name}_80x24")

    asyncio.run(go())


def test_voice_picker_on_the_demo_model_with_a_bad_file():
    class Demo(FakeConversation):
        def voices(self) -> list[str]:
            return ["none"]

    async def go():
        conv = Demo()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("v")
            await settle(pilot)
            await pilot.press("down", "enter", *"/voices/nope.wav", "enter")
            await settle(pilot)
            app.screen.query_one("Input").cursor_blink = False
            await settle(pilot, 0.1)
            check(app, "voice_picker_demo_80x24")

    asyncio.run(go())


STARTED = datetime(2025, 3, 14, 9, 26, tzinfo=timezone.utc)


def recorded_sessions() -> Path:
    """Three finished sessions (talk, respond, served) and a damaged one, at fixed times."""
    assert len(str(SESSIONS)) == len(SHOWN)
    shutil.rmtree(SESSIONS, ignore_errors=True)
    SESSIONS.mkdir(parents=True)
    kinds = [("talk", "NATF2", PROMPTS["assistant"], 200), ("respond", "NATM1", "You are a patient teacher who explains "
             "every step twice, slowly.\nAsk questions.", 120), ("served", "VARF3", "Casual chat.", 60)]
    for n, (kind, voice, prompt, steps) in enumerate(kinds):
        folder = SESSIONS / f"2025-03-14T09-{26 + n:02d}-00_00{n}a"
        folder.mkdir()
        bus = EventBus()
        meta = SessionMeta(model_id="demo (random weights)", voice=voice, role_prompt=prompt, kind=kind)
        with Recorder(bus, folder, meta, started=STARTED.replace(minute=26 + n)):
            for ev in scripted_events(steps):
                bus.publish(ev)
    broken = SESSIONS / "2025-03-14T09-30-00_00zz"
    broken.mkdir()
    (broken / "session.json").write_text("{not json")
    (broken / "steps.jsonl").write_text("")
    return SESSIONS


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_session_browser(size):
    root = recorded_sessions()

    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv, autostart=False, sessions_root=root)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await pilot.press("s")
            await settle(pilot)
            check(app, f"sessions_{size[0]}x{size[1]}")

    asyncio.run(go())


def test_replay_paused_half_way():
    session = load_session(recorded_sessions() / "2025-03-14T09-26-00_000a")

    async def go():
        app = ReplayApp(session)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = app.screen
            screen._play_from(150, autoplay=False)  # paused at 00:12, history drawn up to there
            await settle(pilot)
            app.clear_notifications()
            await settle(pilot, 0.1)
            check(app, "replay_80x24")

    asyncio.run(go())


class StillFeed:
    """What MonitorApp reads of a MonitorFeed, without a socket."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.connected = True
        self.info = {"model": "demo (random weights)", "is_demo": True, "quantization": None, "voice": "none",
                     "prompt_name": "assistant", "input_device": "pulse", "output_device": "pulse",
                     "session_dir": "/home/ann/.local/share/ppchat/sessions/2025-03-14T09-26-00_000a",
                     "session_stats": {"steps": 1500, "total_ms": {"mean": 44.1, "p50": 43.0, "p95": 58.2, "max": 97.5},
                                       "late_frames": 7, "dropped_frames": 2, "underruns": 1, "xruns": 0}}


def test_monitor():
    async def go():
        feed = StillFeed()
        app = MonitorApp(feed)
        async with app.run_test(size=(80, 24)) as pilot:
            # Attached 2 minutes into the conversation.
            for ev in scripted_events():
                # Over the socket a step has no audio, only each track's 10 ms peak envelope.
                sent = MonitorStep(**{f.name: getattr(ev, f.name) for f in fields(StepEvent)})
                sent.step, sent.audio_time = ev.step + 1500, ev.audio_time + 120.0
                sent.env_in, sent.env_out = level_envelope(ev.user_pcm), level_envelope(ev.agent_pcm)
                sent.user_pcm = sent.agent_pcm = None
                feed.bus.publish(sent)
            await settle(pilot)
            assert app.status_bar.status.state is UiState.MONITOR
            check(app, "monitor_80x24")

    asyncio.run(go())


def test_snapshots_are_drawn_the_same_twice():
    """The same feed twice gives the same SVG: nothing on screen depends on the clock or chance."""

    async def draw() -> str:
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await live_console(pilot, conv)
            return screenshot(app, "x")

    assert asyncio.run(draw()) == asyncio.run(draw())


def test_every_snapshot_has_its_svg():
    texts = {p.stem for p in SNAPSHOTS.glob("*.txt")}
    assert texts and texts == {p.stem for p in SNAPSHOTS.glob("*.svg")}
