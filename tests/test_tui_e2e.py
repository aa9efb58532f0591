"""The console driven by Textual's Pilot over the real engine on the demo model."""

from __future__ import annotations

import asyncio

import numpy as np
import soundfile as sf

from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.prompts import PRESETS
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.models.loader import load_model
from ppchat.sampling import Sampling
from ppchat.sessions.store import list_sessions, load_session
from ppchat.tui.app import PPChatApp
from ppchat.tui.pickers import PromptPicker, VoicePicker
from ppchat.tui.widgets.latency import LatencyPanel
from ppchat.tui.widgets.monologue import Monologue


async def _wait_for(pilot, condition, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not reached in time")


def test_talk_pick_voice_and_prompt_then_quit_saves(tmp_path):
    model = load_model("demo", cache_root=tmp_path / "cache", depformer_steps=8, show_progress=False)
    voice = tmp_path / "myvoice.wav"
    sf.write(voice, (0.2 * np.sin(np.arange(24000) * 0.06)).astype(np.float32), 24000)
    mic = (0.2 * np.sin(np.arange(24000 * 60) * 0.05)).astype(np.float32)
    options = TalkOptions(model="demo", sessions_dir=tmp_path / "sessions", monitor=False,
                          sampling=Sampling(seed=5))
    conv = Conversation(options, model=model, audio_factory=lambda: ArrayAudio(mic, 24000, realtime=True))
    conv._custom_voices.append(str(voice))  # as if chosen earlier with --voice

    async def go():
        app = PPChatApp(conv, sessions_root=tmp_path / "sessions")
        async with app.run_test(size=(100, 30)) as pilot:
            latency = app.query_one(LatencyPanel)
            await _wait_for(pilot, lambda: latency.stats.steps >= 10)
            assert conv.info["voice"] == "none" and conv.info["is_demo"]

            # Voice picker: choose the custom WAV; the conversation restarts with it.
            await pilot.press("v")
            await _wait_for(pilot, lambda: isinstance(app.screen, VoicePicker))
            await pilot.pause(0.3)  # let the picker mount its list before keys arrive
            await pilot.press("end", "up", "enter")  # the last entry is "From an audio file…"
            await _wait_for(pilot, lambda: conv.voice_name == str(voice) and conv.running)
            assert conv.prefill.voice_frames == 13

            # Prompt picker: the casual preset.
            await pilot.press("p")
            await _wait_for(pilot, lambda: isinstance(app.screen, PromptPicker))
            await pilot.pause(0.3)
            names = list(conv.prompts())
            for _ in range(names.index("casual")):
                await pilot.press("down")
            await pilot.press("enter")
            await _wait_for(pilot, lambda: conv.prompt_text == PRESETS["casual"] and conv.running)

            latency = app.query_one(LatencyPanel)
            await _wait_for(pilot, lambda: latency.stats.steps >= 10)
            await _wait_for(pilot, lambda: app.query_one(Monologue).transcript.plain_lines())
            assert latency.stats.percentile(50) > 0
            await pilot.press("q")
        assert not conv.running

    asyncio.run(go())
    conv.close()
    sessions = list_sessions(tmp_path / "sessions")
    # Three conversations: the first, after the voice change, after the prompt change.
    assert len(sessions) == 3
    last = max((load_session(s.path) for s in sessions), key=lambda s: s.info.started)
    assert last.status == "ok" and last.info.meta.role_prompt == PRESETS["casual"]
    assert last.info.meta.voice == str(voice) and last.frames >= 10
