"""Stopping, quitting or restarting while a long voice prompt conditions gives the conditioning up
between two of its chunks (8 Mimi-encoded frames, or one prefill chunk), instead of waiting for the
whole prefill (tens of seconds for a long WAV). Nothing half-built is stepped, nothing was recorded.

The tests count the chunks that ran after the stop was asked for, not seconds: a chunk blocks
until the stop request has arrived (`Probe`), so a start that ignored it would run every chunk."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import numpy as np
import pytest
import soundfile as sf

from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.errors import ConditioningCancelled
from ppchat.models.loader import load_model
from ppchat.sampling import Sampling
from tests.conftest import fixture_bundle

VOICE_SECONDS = 8.0  # 100 frames: 13 chunks of voice encoding, then the prefill's


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = fixture_bundle(tmp_path_factory.mktemp("bundle"))
    return load_model(root, cache_root=tmp_path_factory.mktemp("cache"), show_progress=False)


@pytest.fixture
def long_voice(tmp_path):
    rate = 16000
    t = np.arange(int(VOICE_SECONDS * rate)) / rate
    path = tmp_path / "long voice.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32), rate)
    return path


class Probe(Conversation):
    """A conversation whose first conditioning, at its `pause_at`-th progress report, calls
    `on_pause` and then waits (up to `wait_s`) for a stop request. Of that first start, `chunks`
    counts the reports, and `after_request` those that got through after the request (0: it gave
    up at once)."""

    def __init__(self, *args, pause_at: int = 2, on_pause=None, wait_s: float = 20.0, **kwargs):
        self.pause_at, self.on_pause, self.wait_s = pause_at, on_pause, wait_s
        self.chunks = 0
        self.after_request = 0
        self.requested = threading.Event()
        self._starts = 0
        super().__init__(*args, **kwargs)

    def abandon_start(self) -> None:
        super().abandon_start()
        self.requested.set()

    def _progress_publisher(self, interval_s: float = 0.1):
        publish = super()._progress_publisher(interval_s)
        self._starts += 1
        if self._starts > 1:
            return publish

        def probe(task: str, done: int, total: int) -> None:
            self.chunks += 1
            if self.chunks == self.pause_at and self.on_pause is not None:
                self.requested.clear()
                self.on_pause()
                self.requested.wait(self.wait_s)
            was_requested = self.requested.is_set() and self.chunks > self.pause_at
            publish(task, done, total)
            self.after_request += was_requested

        return probe


def options(tmp_path, **kw) -> TalkOptions:
    return TalkOptions(sessions_dir=tmp_path / "sessions", monitor=False, sampling=Sampling(seed=7), **kw)


def silence(seconds: float = 2.0, realtime: bool = False):
    return lambda: ArrayAudio(np.zeros(int(24000 * seconds), np.float32), 24000, realtime=realtime)


def sessions(tmp_path) -> list:
    root = tmp_path / "sessions"
    return sorted(root.iterdir()) if root.exists() else []


def test_stop_during_a_long_voice_prefill_gives_it_up_at_the_next_chunk(tiny_model, tmp_path, long_voice):
    reached = threading.Event()
    conv = Probe(options(tmp_path, voice=str(long_voice)), model=tiny_model, audio_factory=silence(),
                 on_pause=reached.set)
    sub = conv.bus.subscribe(maxlen=4096)
    outcome: list = []

    def start() -> None:
        try:
            outcome.append(conv.start())
        except BaseException as exc:  # noqa: BLE001 - looked at below
            outcome.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    assert reached.wait(60)
    conv.stop()  # returns once the start has let go: one chunk, not the whole prefill
    starter.join(30)
    try:
        assert isinstance(outcome[0], ConditioningCancelled), outcome
        assert conv.after_request == 0 and conv.chunks == conv.pause_at
        assert not conv.running and conv.runtime is None and conv.recorder is None
        assert sessions(tmp_path) == [] and conv.last_session_dir is None  # nothing went live, nothing recorded
        notices = [e.message for e in sub.drain() if isinstance(e, NoticeEvent)]
        assert "prefill stopped at voice prompt 16/100: nothing recorded" in notices
        with pytest.raises(RuntimeError, match="start"):  # the half-conditioned model is not stepped
            conv.pipeline.process(np.zeros(conv.pipeline.frame_size, np.float32))
    finally:
        conv.close()


def live_output(conv: Conversation, voice: str) -> tuple[list, np.ndarray]:
    sub = conv.bus.subscribe(maxlen=4096)
    conv.start(voice=voice)
    assert conv.runtime.join(60)
    conv.stop()
    steps = [e for e in sub.drain() if isinstance(e, StepEvent)]
    sub.close()
    return [e.text_token for e in steps], np.concatenate([e.agent_pcm for e in steps])


def test_a_start_after_an_abandoned_one_conditions_from_scratch(tiny_model, tmp_path, long_voice):
    """The same seeded conversation, after a start given up halfway through its voice encoding or
    its prefill, says exactly what it says on a fresh controller."""
    fresh = Conversation(options(tmp_path / "a", record=False), model=tiny_model, audio_factory=silence())
    fresh.pipeline.gen.prefill_chunk = 16  # the prefill in 8 chunks, to be given up in one of them
    try:
        expected = live_output(fresh, str(long_voice))
    finally:
        fresh.close()
    for pause_at in (3, 16):  # in the voice encoding (13 reports), in the prefill (3rd of 8 reports)
        conv = Probe(options(tmp_path / "b", record=False, voice=str(long_voice)), model=tiny_model,
                     audio_factory=silence(), pause_at=pause_at, wait_s=0)
        conv.pipeline.gen.prefill_chunk = 16
        conv.on_pause = conv.abandon_start  # as a signal handler does, on the conditioning thread itself
        try:
            with pytest.raises(ConditioningCancelled):
                conv.start()
            assert conv.after_request == 0
            conv.on_pause = None
            tokens, agent = live_output(conv, str(long_voice))
        finally:
            conv.close()
        assert tokens == expected[0]
        np.testing.assert_array_equal(agent, expected[1])


def test_a_restart_during_a_long_prefill_cancels_it_instead_of_queueing_behind_it(tiny_model, tmp_path, long_voice):
    reached = threading.Event()
    conv = Probe(options(tmp_path, voice=str(long_voice)), model=tiny_model, audio_factory=silence(realtime=True),
                 on_pause=reached.set)
    outcome: list = []

    def start() -> None:
        try:
            outcome.append(conv.start())
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert reached.wait(60)
        report = conv.restart(voice="none")  # as the console's voice picker does
        starter.join(30)
        assert isinstance(outcome[0], ConditioningCancelled) and conv.after_request == 0
        assert report.voice_frames == 0 and conv.running and conv.voice_name == "none"
    finally:
        conv.close()
    # Only the conversation that went live was recorded (the old one used to go live, then be
    # stopped at once: an empty session beside it).
    assert len(sessions(tmp_path)) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_talk_no_tui_ended_by_a_signal_during_the_prefill_stops_at_once(tiny_model, tmp_path, long_voice, capsys, sig):
    from ppchat.commands.talk import _headless_lines

    conv = Probe(options(tmp_path, voice=str(long_voice)), model=tiny_model, audio_factory=silence(),
                 on_pause=lambda: os.kill(os.getpid(), sig))  # the handler runs on this (the conditioning) thread
    try:
        code = _headless_lines(conv, duration=None)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C was raised into the conditioning instead of abandoning it")
    finally:
        conv.close()
    err = capsys.readouterr().err
    assert code == 128 + sig
    assert conv.after_request == 0 and conv.chunks == conv.pause_at
    assert "[prefill] voice prompt 8/100 frames 8%" in err
    assert "[info] prefill stopped at voice prompt 16/100: nothing recorded" in err
    assert f"{signal.Signals(sig).name.lower()}: nothing recorded" in err and "session saved" not in err
    assert sessions(tmp_path) == []


def test_respond_prints_the_prefill_progress_of_a_long_voice(tiny_model, tmp_path, long_voice, capsys):
    from ppchat.respond import respond

    given = tmp_path / "in.wav"
    sf.write(given, np.zeros(24000, np.float32), 24000)
    assert respond(given, tmp_path / "out.wav", options(tmp_path, voice=str(long_voice)), model=tiny_model) == 0
    err = capsys.readouterr().err.splitlines()
    progress = [line for line in err if line.startswith("[prefill] ")]
    assert progress[0].startswith("[prefill] voice prompt ")
    assert "[prefill] voice prompt 100/100 frames 100%" in progress
    assert progress[-1].startswith("[prefill] prompt prefill ") and progress[-1].endswith(" 100%")
    warnings = [line for line in err if line.startswith(f"[warning] voice {long_voice} is 8 s")]
    assert len(warnings) == 1 and err.index(warnings[0]) < err.index(progress[0])  # once, before the wait
    assert not any(line.startswith("[info]") for line in err)  # respond keeps to warnings and errors
    assert err[-1].startswith(f"ppchat: wrote {tmp_path / 'out.wav'} (1.00 s, 13 frames)")


# --- the console ------------------------------------------------------------------------------


def console_run(conv: Probe, during_prefill) -> tuple:
    """Run the console on `conv` until it ends; once the conditioning has paused (`conv.on_pause`),
    `during_prefill(pilot, app)` acts. Returns the app and its error notices."""
    from ppchat.tui.app import PPChatApp

    reached = threading.Event()
    conv.on_pause = reached.set

    async def go():
        app = PPChatApp(conv)
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(1200):
                if reached.is_set():
                    break
                await pilot.pause(0.05)
            assert reached.is_set()
            await during_prefill(pilot, app)
        return app

    app = asyncio.run(go())
    errors = [n.message for n in app.notice_log.entries if n.level == "error"]
    return app, errors


@pytest.mark.parametrize("key,code", [("q", 0), ("ctrl+c", 130)])
def test_quitting_the_console_during_a_long_prefill_does_not_wait_for_it(tiny_model, tmp_path, long_voice, key, code):
    conv = Probe(options(tmp_path, voice=str(long_voice)), model=tiny_model, audio_factory=silence(realtime=True))

    async def quit_now(pilot, app):
        await pilot.press(key)
        for _ in range(200):
            if not app.is_running:
                break
            await pilot.pause(0.05)

    try:
        app, errors = console_run(conv, quit_now)
        assert app.return_code == code
        assert conv.after_request == 0 and conv.chunks == conv.pause_at
        assert errors == [] and not conv.running and sessions(tmp_path) == []
    finally:
        conv.close()


def test_space_during_a_long_prefill_stops_it_and_space_starts_again(tiny_model, tmp_path, long_voice):
    conv = Probe(options(tmp_path, voice=str(long_voice)), model=tiny_model, audio_factory=silence(seconds=30, realtime=True))

    async def stop_then_start(pilot, app):
        await pilot.press("space")
        for _ in range(200):
            if app.state == "stopped":
                break
            await pilot.pause(0.05)
        assert app.state == "stopped" and conv.after_request == 0
        await pilot.press("space")  # conditions anew (the probe no longer pauses) and goes live
        for _ in range(600):
            if app.state == "live":
                break
            await pilot.pause(0.05)
        assert app.state == "live" and conv.running
        await pilot.press("q")

    try:
        app, errors = console_run(conv, stop_then_start)
        assert errors == []
    finally:
        conv.close()
    assert len(sessions(tmp_path)) == 1  # the conversation that went live; none for the one abandoned
