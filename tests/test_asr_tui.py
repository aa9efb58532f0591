"""The user's words in the console: live captions under the monologue, and a transcribed session in replay."""

from __future__ import annotations

import asyncio
import math

from ppchat.asr.captions import CaptionEvent
from ppchat.sessions.store import load_session
from ppchat.sessions.user_transcript import UserLine, write_user_transcript
from ppchat.tui.app import PPChatApp
from ppchat.tui.replay import ReplayApp
from ppchat.tui.widgets.captions import Captions
from tests.test_tui_app import FakeConversation
from tests.test_tui_replay import record_session, screen_text, settle


def test_live_captions_appear_under_the_monologue_partial_then_final():
    conv = FakeConversation()

    async def go():
        app = PPChatApp(conv, autostart=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            captions = app.live.query_one(Captions)
            assert not captions.display and "you ›" not in screen_text(app)  # no captions: the console as before
            conv.bus.publish(CaptionEvent("partial", 3.84, None, "how are"))
            await settle(pilot)
            assert captions.display and captions.plain_lines() == ["00:03 you › how are"]
            conv.bus.publish(CaptionEvent("final", 3.84, 5.6, "how are you today"))
            conv.bus.publish(CaptionEvent("partial", 7.32, None, "and"))
            await settle(pilot)
            assert captions.plain_lines() == ["00:03 you › how are you today", "00:07 you › and"]
            screen = screen_text(app)
            assert "00:03 you › how are you today" in screen and "00:07 you › and" in screen
            conv.bus.publish(CaptionEvent("final", 7.32, 9.0, "and " + "very " * 30 + "long"))
            await settle(pilot)
            last = captions.plain_lines()[-1]
            assert last.startswith("00:07 you › …") and last.endswith("very very long") and len(last) <= captions.content_region.width
            monologue_bottom = app.live.monologue.region.bottom
            assert captions.region.y >= monologue_bottom and captions.region.right <= app.live.latency.region.x

    asyncio.run(go())


def test_replay_shows_the_users_words_when_each_utterance_ends(tmp_path):
    session_dir = record_session(tmp_path, "2025-01-01T10-00-00_aaaa")
    write_user_transcript(session_dir, [UserLine(1.0, 2.0, "good morning to you"), UserLine(5.0, 6.5, "bye now"),
                                        UserLine(7.0, 7.5, "")], model="test", language=None)  # fmt: skip
    session = load_session(session_dir)

    async def go():
        app = ReplayApp(session, speed=math.inf)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            captions = app.screen.query_one(Captions)
            assert captions.plain_lines() == ["00:01 you › good morning to you", "00:05 you › bye now"]
            assert "00:05 you › bye now" in screen_text(app)
            app.screen._play_from(50, autoplay=False)  # frame 50 = 4.0 s, before the second utterance ends
            await settle(pilot)
            assert captions.plain_lines() == ["00:01 you › good morning to you"]

    asyncio.run(go())


def test_replay_of_a_session_without_user_transcript_shows_no_captions(tmp_path):
    session = load_session(record_session(tmp_path, "2025-01-01T10-00-00_bbbb"))

    async def go():
        app = ReplayApp(session, speed=math.inf)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert not app.screen.query_one(Captions).display

    asyncio.run(go())
