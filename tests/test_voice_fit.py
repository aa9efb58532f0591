"""A long voice prompt: conditioning reports its progress as it goes, and a voice long enough to
crowd the model's attention window is warned about (it is used whole, as the reference does)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.events import NoticeEvent, ProgressEvent
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.engine.voice_fit import long_voice_notice
from ppchat.models.loader import load_model
from ppchat.sampling import Sampling
from tests.conftest import fixture_bundle

SILENCE = 6


def test_only_a_voice_that_crowds_the_window_is_warned_about():
    # PersonaPlex attends to 2999 frames. 10 s (125 frames) is what a voice prompt is.
    assert long_voice_notice("ten", 125, 3000, 30, SILENCE) is None
    # Up to half the window (1499 frames) left for the conversation: still fine.
    assert long_voice_notice("edge", 2999 - 1500 - 42, 3000, 30, SILENCE) is None
    assert long_voice_notice("edge", 2999 - 1499 - 42, 3000, 30, SILENCE) is not None
    # 3.6 min: with the prompt 2742 frames, so after 257 live frames (21 s) the voice starts leaving.
    message = long_voice_notice("long.wav", 2700, 3000, 30, SILENCE)
    assert "voice long.wav is 3.6 min (2700 frames)" in message
    assert "takes 2742 of the 2999 frames the model attends to" in message and "21 s into the conversation" in message
    # Longer than the window: its start has left before the first live frame.
    assert "before the conversation starts" in long_voice_notice("huge", 4000, 3000, 30, SILENCE)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = fixture_bundle(tmp_path_factory.mktemp("bundle"))
    return load_model(root, cache_root=tmp_path_factory.mktemp("cache"), show_progress=False)


def _long_wav(path, seconds: float, rate: int = 16000):
    t = np.arange(int(seconds * rate)) / rate
    speechlike = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    sf.write(path, speechlike.astype(np.float32), rate)
    return path


def test_a_long_voice_file_reports_its_progress_and_is_used_whole(tiny_model, tmp_path):
    voice = _long_wav(tmp_path / "long.wav", 8.0)  # 100 frames; the tiny model attends to 39
    conv = Conversation(TalkOptions(sessions_dir=tmp_path / "s", monitor=False, record=False, sampling=Sampling(seed=1)),
                        model=tiny_model, audio_factory=lambda: ArrayAudio(np.zeros(1920 * 2, np.float32), 24000, realtime=False))
    sub = conv.bus.subscribe(maxlen=4096)
    report = conv.start(voice=str(voice), prompt="You talk.")
    conv.runtime.join(timeout=30)
    conv.close()
    events = sub.drain()
    frames = report.voice_frames
    assert frames == 100  # used whole
    warnings = [e.message for e in events if isinstance(e, NoticeEvent) and e.level == "warning"]
    assert any(f"voice {voice} is 8 s (100 frames)" in w and "before the conversation starts" in w for w in warnings), warnings
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    encode = [(e.done, e.total) for e in progress if e.task == "voice prompt"]
    prefill = [(e.done, e.total) for e in progress if e.task == "prompt prefill"]
    assert encode[0][0] < frames and encode[-1] == (frames, frames)  # a first report early, the last at the end
    assert [d for d, _ in encode] == sorted(d for d, _ in encode)
    assert prefill and prefill[-1][0] == prefill[-1][1] == report.calls - 1  # call 0 runs nothing
    # The first live frame comes after the last report.
    assert progress[-1].wall_time <= conv.started_at + 1


def test_talk_no_tui_prints_the_progress_of_a_long_voice(tiny_model, tmp_path, capsys):
    """`ppchat talk --no-tui`'s loop: while the model conditions on a long voice, the notices and
    progress lines come on stderr, before the first status line."""
    from ppchat.commands.talk import _headless_lines

    voice = _long_wav(tmp_path / "long.wav", 8.0)
    conv = Conversation(TalkOptions(voice=str(voice), prompt="You talk.", sessions_dir=tmp_path / "s", monitor=False,
                                    record=False, sampling=Sampling(seed=1)),
                        model=tiny_model, audio_factory=lambda: ArrayAudio(np.zeros(1920 * 30, np.float32), 24000))
    try:
        assert _headless_lines(conv, duration=None) == 0
    finally:
        conv.close()
    err = capsys.readouterr().err.splitlines()
    progress = [line for line in err if line.startswith("[prefill] ")]
    assert progress[0].startswith("[prefill] voice prompt ")
    assert "[prefill] voice prompt 100/100 frames 100%" in progress
    assert progress[-1].startswith("[prefill] prompt prefill ") and progress[-1].endswith(" 100%")
    warning = next(n for n, line in enumerate(err) if line.startswith(f"[warning] voice {voice} is 8 s"))
    assert warning < err.index(progress[0])  # the warning comes before the wait
