"""Pilot tests of the console with a fake controller publishing real StepEvents on a real EventBus.

The screens themselves are compared with committed snapshots in test_tui_snapshots.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ppchat.engine.events import EventBus, NoticeEvent, ProgressEvent, StepEvent
from ppchat.errors import AudioError
from ppchat.tui.app import PPChatApp
from ppchat.tui.pickers import PromptPicker, VoicePicker
from ppchat.tui.widgets.latency import LatencyPanel
from ppchat.tui.widgets.monologue import Monologue

SNAPSHOTS = Path(__file__).parent / "snapshots"
PROMPTS = {"assistant": "You are a helpful assistant.", "teacher": "You are a patient teacher."}
VOICES = ["NATF0", "NATF2", "NATM1", "/voices/grandpa.wav"]


class FakeConversation:
    """Records the calls the console makes; the test publishes the events."""

    def __init__(self, fail_start: Exception | None = None, start_gate: threading.Event | None = None) -> None:
        self.bus = EventBus()
        self.start_gate = start_gate  # start blocks (the prefill) until it is set
        self.running = False
        self.calls: list[tuple] = []
        self.fail_start = fail_start
        self.started_at: float | None = None
        self.aec = "unavailable"  # what info reports: "on", "off" or "unavailable" (no canceller)

    @property
    def info(self) -> dict:
        return {
            "model": "PersonaPlex 7B", "is_demo": True, "quantization": "q8",
            "input_device": "USB mic", "output_device": "Speakers", "voice": "NATF2",
            "prompt": PROMPTS["assistant"], "prompt_name": "assistant",
            "session_dir": "/var/ppchat/sessions/2025-01-01T10-00-00_ab12",
            "started_at": self.started_at, "aec": self.aec,
        }

    @property
    def lifecycle(self) -> list[tuple]:
        """The start/stop/restart calls only."""
        return [c for c in self.calls if c[0] in ("start", "stop", "restart")]

    @property
    def switches(self) -> list[tuple]:
        """The mute/half-duplex/mark calls only."""
        return [c for c in self.calls if c[0] in ("mute", "half_duplex", "aec", "mark")]

    def start(self, voice: str, prompt: str) -> None:
        self.calls.append(("start", voice, prompt))
        if self.start_gate is not None:
            self.start_gate.wait(10)
        if self.fail_start:
            raise self.fail_start
        self.running, self.started_at = True, time.time()

    def stop(self) -> None:
        self.calls.append(("stop",))
        self.running = False

    def restart(self, voice: str, prompt: str) -> None:
        self.calls.append(("restart", voice, prompt))
        self.running, self.started_at = True, time.time()

    def set_mute(self, on: bool) -> None:
        self.calls.append(("mute", on))

    def set_half_duplex(self, on: bool) -> None:
        self.calls.append(("half_duplex", on))

    def set_aec(self, on: bool) -> None:
        self.calls.append(("aec", on))
        if self.aec != "unavailable":  # as Conversation: the choice is kept, there is nothing to switch
            self.aec = "on" if on else "off"

    def mark(self) -> None:
        self.calls.append(("mark",))

    def voices(self) -> list[str]:
        return list(VOICES)

    def check_voice(self, voice: str) -> None:
        if voice not in VOICES and not os.path.isfile(voice):
            raise AudioError(f"cannot read voice audio {voice}: no such file")

    def prompts(self) -> dict[str, str]:
        return dict(PROMPTS)


WORDS = [" Hello", " there", ",", " how", " can", " I", " help", "?"]


def speech_like(step: int, amplitude: float) -> np.ndarray:
    """One 80 ms frame of a 180 Hz voice under 4-syllables-a-second envelope; quiet room
    noise (from a generator seeded by the step) when `amplitude` is 0."""
    n = step * 1920 + np.arange(1920)
    if amplitude == 0:
        return (3e-4 * np.random.default_rng(step).standard_normal(1920)).astype(np.float32)
    envelope = np.abs(np.sin(np.pi * n / 6000.0)) ** 2
    return (amplitude * envelope * np.sin(2 * np.pi * 180 * n / 24000)).astype(np.float32)


def rms_peak(pcm: np.ndarray) -> tuple[float, float]:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))), float(np.max(np.abs(pcm)))


def scripted_events(n: int = 200) -> list[StepEvent]:
    """A deterministic conversation: the user speaks for 2 s, then the agent answers in two
    turns; a late step every 4 s, a mark at 12 s, one agent frame lost (filled) at 8 s."""
    events = []
    for i in range(n):
        user_speaks = i < 25
        turn_start = next((s for s in (40, 120) if s <= i < s + 3 * len(WORDS)), None)
        agent_turn = turn_start is not None
        token, piece = 3, None
        if agent_turn and (i - turn_start) % 3 == 0:
            token, piece = 100 + i, WORDS[(i - turn_start) // 3]
        total = 95.0 if i % 50 == 49 else 40.0 + (i % 7)
        user = speech_like(i, 0.5 if user_speaks else 0.0)
        agent = speech_like(i + 7, 0.4) if agent_turn else np.zeros(1920, np.float32)
        (in_rms, in_peak), (out_rms, out_peak) = rms_peak(user), rms_peak(agent)
        events.append(StepEvent(
            step=i, audio_time=i * 0.08, wall_time=time.time() + i * 0.08,
            timings_ms={"encode": 4.0, "temporal": 24.0, "depformer": 9.0, "decode": 3.0, "total": total},
            text_token=token, text_piece=piece,
            in_rms=in_rms, in_peak=in_peak, out_rms=out_rms, out_peak=out_peak,
            late=total > 80.0, queue_in=1, queue_out=2, marked=i == 150,
            filled="agent" if i == 100 else None, user_pcm=user, agent_pcm=agent,
        ))
    return events


def screen_text(app: PPChatApp) -> str:
    """What the terminal shows, as plain text."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True, force_terminal=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def settle(pilot, seconds: float = 0.3) -> None:
    """Let the redraw timer drain the bus and workers finish."""
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def run(coro):
    return asyncio.run(coro)


def test_autostart_then_events_show_text_latency_and_waveforms():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert conv.lifecycle[0] == ("start", "NATF2", PROMPTS["assistant"])
            events = scripted_events()
            for ev in events[:30]:
                conv.bus.publish(ev)
            await settle(pilot)
            assert app.state == "live"
            # The user spoke for steps 0-24: the mic's waveform reaches its top and bottom rows
            # there; the agent's rows hold only the thin centre line (⠒).
            rows = screen_text(app).splitlines()
            assert "⣿" in rows[2] and "⣿" in rows[4] and set("".join(row[7:] for row in rows[5:8])) <= {" ", "⠒"}
            for ev in events[30:]:
                conv.bus.publish(ev)
            await settle(pilot)
            lines = app.query_one(Monologue).transcript.plain_lines()
            assert lines[0] == "00:03 Hello there, how can I help?"
            assert lines[1].startswith("00:09 Hello there")
            stats = app.query_one(LatencyPanel).stats
            assert stats.steps == 200 and stats.late == 4
            text = screen_text(app)
            assert "Hello there, how can I help?" in text
            p50 = np.percentile([ev.timings_ms["total"] for ev in events], 50)
            assert "late 4" in text and f"p50 {p50:.1f}" in text and "max 95.0" in text
            assert "● LIVE" in text and "DEMO" in text and "00:16" in text  # 200 steps of 80 ms
            # The agent's second answer (steps 120-143) is in view in the agent rows.
            assert "⣿" in text.splitlines()[7]
    run(go())


def test_space_stops_and_starts_and_quit_always_stops():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("space")
            await settle(pilot)
            assert conv.lifecycle[-1] == ("stop",) and app.state == "stopped"
            await pilot.press("space")
            await settle(pilot)
            assert conv.lifecycle[-1][0] == "start" and app.state == "starting"
            await pilot.press("q")
            await settle(pilot)
        assert conv.lifecycle[-1] == ("stop",)
        assert app.return_code == 0
    run(go())


def test_quit_without_autostart_still_calls_stop():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv, autostart=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert conv.calls == []
            await pilot.press("q")
            await settle(pilot)
        assert conv.calls == [("stop",)]
    run(go())


def test_mute_half_duplex_and_mark_keys():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            conv.calls.clear()
            await pilot.press("m", "h", "k", "m")
            await settle(pilot)
            assert conv.switches == [("mute", True), ("half_duplex", True), ("mark",), ("mute", False)]
            await pilot.press("m")
            await settle(pilot)
            text = screen_text(app)
            assert "MUTED" in text and "HALF-DUPLEX" in text
            # A restart (new voice) brings a fresh runtime: the console re-applies both switches.
            conv.calls.clear()
            await pilot.press("v", "down", "enter")
            await settle(pilot)
            assert conv.calls == [("restart", "NATM1", PROMPTS["assistant"]), ("mute", True), ("half_duplex", True), ("aec", True)]
    run(go())


def test_aec_key_and_the_echo_removed_beside_the_mic():
    async def go():
        conv = FakeConversation()
        conv.aec = "on"
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            events = scripted_events(30)
            for i, e in enumerate(events):
                e.aec, e.erle_db = True, (None if i < 10 else 31.4)
            for e in events[:5]:
                conv.bus.publish(e)
            await settle(pilot)
            assert app.live.wave_in.note == "AEC --"  # no estimate yet
            for e in events[5:]:
                conv.bus.publish(e)
            await settle(pilot)
            assert app.live.wave_in.note == "AEC 31" and "AEC 31" in screen_text(app)
            conv.calls.clear()
            await pilot.press("a")
            await settle(pilot)
            assert conv.switches == [("aec", False)]
            assert app.live.wave_in.note == "AECoff" and "AECoff" in screen_text(app)
            await pilot.press("m")
            await settle(pilot)
            assert "MUTED" in screen_text(app)  # the badge wins the row
            # Without a canceller (--aec off, library missing) the key says so and changes nothing.
            conv.aec = "unavailable"
            conv.calls.clear()
            await pilot.press("a")
            await settle(pilot)
            assert conv.calls == []
            await pilot.press("m")
            for e in scripted_events(3):
                conv.bus.publish(e)
            await settle(pilot)
            assert app.live.wave_in.note == "" and "AEC" not in screen_text(app).split("agent")[0]
    run(go())


def test_voice_picker_restarts_with_the_chosen_voice():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("v")
            await settle(pilot)
            assert isinstance(app.screen, VoicePicker)
            assert "grandpa.wav" in screen_text(app)
            await pilot.press("down", "enter")  # NATF2 is highlighted; the next is NATM1
            await settle(pilot)
            assert conv.lifecycle[-1] == ("restart", "NATM1", PROMPTS["assistant"])
            assert "voice NATM1" in screen_text(app)
            await pilot.press("v", "escape")
            await settle(pilot)
            assert conv.lifecycle == [("start", "NATF2", PROMPTS["assistant"]), ("restart", "NATM1", PROMPTS["assistant"])]
    run(go())


def test_voice_picker_on_a_model_without_presets_takes_an_audio_file_checked_on_enter(tmp_path):
    class DemoConversation(FakeConversation):
        def voices(self) -> list[str]:
            return ["none"]

    wav = tmp_path / "me.wav"
    wav.write_bytes(b"RIFF")  # the fake's check only asks that the file exists

    async def go():
        conv = DemoConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("v")
            await settle(pilot)
            assert "No preset voices on this model" in screen_text(app) and "From an audio file…" in screen_text(app)
            await pilot.press("down", "enter")  # "From an audio file…"
            await pilot.press(*str(tmp_path / "missing.wav"), "enter")
            await settle(pilot)
            assert isinstance(app.screen, VoicePicker) and "no such file" in screen_text(app)  # stays open
            assert conv.lifecycle == [("start", "NATF2", PROMPTS["assistant"])]
            app.screen.query_one("#voice-path").value = str(wav)
            await pilot.press("enter")
            await settle(pilot)
            assert conv.lifecycle[-1] == ("restart", str(wav), PROMPTS["assistant"])
            assert "voice me.wav" in screen_text(app)
    run(go())


def test_prompt_picker_preset_and_free_text():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("p")
            await settle(pilot)
            assert isinstance(app.screen, PromptPicker)
            await pilot.press("down", "enter")
            await settle(pilot)
            assert conv.lifecycle[-1] == ("restart", "NATF2", PROMPTS["teacher"])
            # Edit the preset text freely: tab into the editor, type, ctrl+s.
            await pilot.press("p", "tab", "end")
            await pilot.press(*" Speak French.")
            await pilot.press("ctrl+s")
            await settle(pilot)
            assert conv.lifecycle[-1] == ("restart", "NATF2", PROMPTS["teacher"] + " Speak French.")
            assert app.prompt_name == "custom" and "prompt custom" in screen_text(app)
    run(go())


def test_choosing_a_voice_while_stopped_waits_for_start():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv, autostart=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("v", "down", "enter")
            await settle(pilot)
            assert conv.calls == []
            await pilot.press("space")
            await settle(pilot)
            assert conv.lifecycle == [("start", "NATM1", PROMPTS["assistant"])]
    run(go())


def test_start_failure_is_shown_not_raised():
    async def go():
        conv = FakeConversation(fail_start=AudioError("no input device 'USB mic': plug it in or pass --input"))
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await settle(pilot)
            assert app.state == "stopped"
            assert any("no input device" in n.message for n in app._notifications)
    run(go())


def test_the_prefill_shows_how_far_it_has_got_until_the_conversation_is_live():
    async def go():
        gate = threading.Event()
        conv = FakeConversation(start_gate=gate)
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            conv.bus.publish(ProgressEvent("voice prompt", 312, 2700, time.time()))
            await pilot.pause(0.3)
            status = screen_text(app).splitlines()[0]
            assert status.startswith("  ◌ PREFILL  voice 312/2700 11% │  DEMO ") and "voice NATF2" in status
            conv.bus.publish(ProgressEvent("prompt prefill", 2742, 2742, time.time()))
            await pilot.pause(0.3)
            assert screen_text(app).startswith("  ◌ PREFILL  prompt 2742/2742 100% │  DEMO ")
            gate.set()
            await settle(pilot)
            conv.bus.publish(scripted_events(1)[0])
            await settle(pilot)
            status = screen_text(app).splitlines()[0]
            assert app.state == "live" and status.startswith("  ● LIVE  00:00 │") and "2742" not in status
    run(go())


def test_start_up_information_stays_off_the_picture_and_every_notice_is_listed_by_n():
    """At 80x24 four start-up toasts covered the right half of the console for seconds: information
    goes to the status bar's second line instead, warnings still pop up, `n` lists them all."""
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await settle(pilot)
            start_up = ["conditioning: voice NATF2, prompt 'assistant'", "the duplex audio stream runs at 48000 Hz",
                        "live (prefill 0.31 s, 47 calls)", "echo cancellation on; loop delay not reported"]
            for message in start_up:
                conv.bus.publish(NoticeEvent("info", message, time.time()))
            for ev in scripted_events(30):
                conv.bus.publish(ev)
            await settle(pilot)
            assert not app._notifications
            rows = screen_text(app).splitlines()
            # The newest one, beside the session folder (its middle elided for the while).
            assert rows[1].rstrip() == " ● rec /var/pp…01T10-00-00_ab12 │ echo cancellation on; loop delay not reported"
            assert "live (prefill" not in "\n".join(rows[2:])  # nothing over the picture
            conv.bus.publish(NoticeEvent("warning", "the audio stream stopped by itself and was reopened (1 of 3)"))
            await settle(pilot)
            assert [n.severity for n in app._notifications] == ["warning"]
            await pilot.press("n")
            await pilot.pause(0.2)
            listed = screen_text(app)
            for message in start_up:
                assert message in listed
            assert "warning the audio stream stopped by itself" in listed
            await pilot.press("n")
            await pilot.pause(0.1)
            assert "Notices of this run" not in screen_text(app)
            app.status_bar.say("saved /var/ppchat/sessions/x", seconds=0.2)
            await pilot.pause(0.1)
            assert "saved /var/ppchat/sessions/x" in screen_text(app).splitlines()[1]
            await pilot.pause(0.4)
            assert "saved" not in screen_text(app).splitlines()[1]
    run(go())


def test_engine_notices_become_toasts():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await settle(pilot)
            conv.bus.publish(NoticeEvent("warning", "recording stopped: disk full"))
            await settle(pilot)
            notes = [(n.message, n.severity) for n in app._notifications]
            assert ("recording stopped: disk full", "warning") in notes
    run(go())


def test_command_palette_offers_the_console_actions():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert {"Voice…", "Prompt…", "Sessions…", "Start / stop", "Mark", "Notices…"} <= set(titles)
            await pilot.press("ctrl+p")
            await pilot.press(*"Voice")
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, VoicePicker)
    run(go())


def screen_colours(app: PPChatApp) -> set[tuple[int, int, int]]:
    """Every foreground and background colour on the screen."""
    colours = set()
    for line in app.screen._compositor.render_update(full=True).strips:
        for strip in line:
            for segment in strip:
                for colour in (segment.style.color, segment.style.bgcolor) if segment.style else ():
                    if colour is not None:
                        colours.add(colour.get_truecolor())
    return colours


@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_is_respected(monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)

    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            for ev in scripted_events(60):
                conv.bus.publish(ev)
            await settle(pilot)
            greys = all(r == g == b for r, g, b in screen_colours(app))
            assert greys == no_color  # colour normally; only shades of grey under NO_COLOR
            assert "█" in screen_text(app)  # the levels are still drawn

    run(go())


def chatty_events(seconds: float = 120.0) -> list[StepEvent]:
    """The agent talks in turns of 3-6 s separated by 2 s pauses, one numbered word every 3 steps."""
    events, word, i = [], 0, 0
    turn_steps, pause_steps = 60, 25
    while i * 0.08 < seconds:
        in_turn = i % (turn_steps + pause_steps) < turn_steps
        token, piece = 3, None
        if in_turn and i % 3 == 0:
            word += 1
            token, piece = 1000 + word, f" w{word}"
        events.append(StepEvent(step=i, audio_time=i * 0.08, wall_time=time.time() + i * 0.08,
                                timings_ms={"total": 40.0}, text_token=token, text_piece=piece))
        i += 1
    return events


def test_monologue_keeps_the_newest_line_in_view_for_two_minutes():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            events = chatty_events(120.0)
            newest = None
            for start in range(0, len(events), 12):  # about one redraw tick of steps at a time
                for ev in events[start:start + 12]:
                    conv.bus.publish(ev)
                    if ev.text_piece:
                        newest = ev.text_piece.strip()
                app.pump()
                await pilot.pause()
                if newest:
                    assert f"{newest} " in screen_text(app) or f"{newest}▌" in screen_text(app), f"{newest} not in view"
            monologue = app.query_one(Monologue)
            assert monologue.max_scroll_y > 20  # the text really overflowed the pane

            # Scrolled back: the view stays where the user put it and says that newer text is below.
            monologue.focus()
            await pilot.press("home")
            for ev in chatty_events(130.0)[len(events):]:
                conv.bus.publish(ev)
            app.pump()
            await pilot.pause()
            assert monologue.scroll_y == 0 and "new text ↓ End" in screen_text(app)
            await pilot.press("end")
            app.pump()
            await pilot.pause()
            assert monologue.following and "new text ↓" not in screen_text(app)
    run(go())


def test_a_restart_starts_a_clean_monologue_on_the_new_clock():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            # 110 s of conversation compressed into 0.11 s of wall time after its start, so
            # that every old step is stamped before the restart, as it would be live.
            old_run = [dataclasses.replace(ev, wall_time=conv.started_at + ev.audio_time / 1000) for ev in chatty_events(110.0)]
            await pilot.pause(0.15)
            for ev in old_run[:1300]:
                conv.bus.publish(ev)
            await settle(pilot)
            assert app.live.monologue.transcript.entries[-1].start > 100
            await pilot.press("v", "down", "enter")  # a new voice: restart
            # The old runtime's last steps arrive while (and after) the new run starts.
            for ev in old_run[1300:1310]:
                conv.bus.publish(ev)
            await settle(pilot)
            assert app.state == "starting" and app.live.monologue.transcript.entries == []
            new_run = [dataclasses.replace(ev, wall_time=time.time() + ev.audio_time, text_piece=ev.text_piece and ev.text_piece.upper())
                       for ev in chatty_events(12.0)]
            for ev in new_run:
                conv.bus.publish(ev)
            await settle(pilot)
            assert app.state == "live"
            lines = app.live.monologue.transcript.plain_lines()
            assert lines[0] == "00:00 " + " ".join(f"W{i}" for i in range(1, 21))
            assert all(" w" not in line for line in lines)  # nothing of the old run
    run(go())


def test_duration_quits_after_that_much_conversation_and_saves():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv, duration=10.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            events = chatty_events(20.0)
            for ev in events[:124]:  # 9.92 s of conversation
                conv.bus.publish(ev)
            await settle(pilot)
            assert app.is_running and conv.lifecycle == [("start", "NATF2", PROMPTS["assistant"])]
            conv.bus.publish(events[124])  # the frame that ends at 10.00 s
            await settle(pilot)
            assert not app.is_running
        assert conv.lifecycle[-1] == ("stop",)
    run(go())


def test_the_footer_keeps_quit_after_shrinking_to_80_columns():
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await pilot.resize_terminal(80, 24)
            await settle(pilot)
            footer = screen_text(app).splitlines()[-1]
            assert "q Quit" in footer and "space Start/stop" in footer and "palette" not in footer
    run(go())


def test_footer_lists_the_keys_while_the_terminal_window_is_not_focused():
    # A console started in a tmux pane that is not the active one gets a focus-out first;
    # Textual's footer then stayed empty until the window was focused.
    from textual.app import App
    from textual.widgets._footer import FooterKey

    async def go():
        app = PPChatApp(FakeConversation(), autostart=False)
        app.set_reactive(App.app_focus, False)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert not app.app_focus
            keys = [key.description for key in app.screen.query(FooterKey)]
            assert keys[:3] == ["Start/stop", "Quit", "Help"]
    run(go())


def test_footer_shows_only_keys_that_fit_whole():
    """At 80 columns the footer ended in 'k M' (Mark cut, AEC gone); at 120 every key fits."""
    from textual.widgets._footer import FooterKey

    async def go():
        app = PPChatApp(FakeConversation(), autostart=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            shown = [k.description for k in app.screen.query(FooterKey) if k.display]
            assert shown == ["Start/stop", "Quit", "Help", "Voice", "Prompt", "Sessions", "Mute", "Half-dup"]
            bottom = screen_text(app).splitlines()[-1].rstrip()
            assert bottom.endswith("h Half-dup")
            await pilot.resize_terminal(120, 40)
            await settle(pilot)
            shown = [k.description for k in app.screen.query(FooterKey) if k.display]
            assert shown[-2:] == ["Mark", "AEC"]
            assert screen_text(app).splitlines()[-1].rstrip().endswith("k Mark a AEC")
    run(go())


def test_ctrl_c_quits_saving_with_the_status_of_an_interrupt():
    """Textual's ctrl+c only said 'Press ctrl+q to quit the app'; in a terminal it means quit."""
    async def go():
        conv = FakeConversation()
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("p")  # in the prompt editor ctrl+c is still the editor's (copy)
            await settle(pilot)
            await pilot.press("tab", "ctrl+c")
            await settle(pilot)
            assert isinstance(app.screen, PromptPicker) and app.is_running
            await pilot.press("escape")
            await settle(pilot)
            await pilot.press("ctrl+c")
            await settle(pilot)
        assert conv.lifecycle[-1] == ("stop",)
        assert app.return_code == 130
    run(go())
