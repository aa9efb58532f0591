"""Shared by the ASR tests: a tiny random Qwen3-ASR checkpoint and a user track with known speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ppchat.engine.events import EventBus, StepEvent
from ppchat.sessions.recorder import start_recording
from ppchat.sessions.schema import SessionMeta

RATE = 24000
FRAME = 1920
# Loud bursts ("speech") on the user track, seconds; 4.0-4.5 and 4.8-5.4 are one utterance
# (the 0.3 s gap is shorter than the segmenter's 0.6 s hang).
BURSTS = [(1.0, 2.2), (4.0, 4.5), (4.8, 5.4), (7.52, 8.0)]
SESSION_S = 9.6


def speech_track(bursts=BURSTS, seconds=SESSION_S, rate=RATE, seed=0) -> np.ndarray:
    """Noise at -70 dBFS with bursts of a modulated tone at about -16 dBFS."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    track = rng.standard_normal(n).astype(np.float32) * 10 ** (-70 / 20)
    t = np.arange(n) / rate
    for lo, hi in bursts:
        part = slice(round(lo * rate), round(hi * rate))
        track[part] += 0.2 * np.sin(2 * np.pi * 220 * t[part]) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t[part]))
    return track


# The agent's text: step -> (token, piece); "Hello there" at 0.4 s, "Fine" at 3.2 s, "Bye" at 6.4 s.
AGENT_TEXT = {5: (1000, "▁Hello"), 6: (1001, "▁there"), 40: (1002, "▁Fine"), 80: (1003, "▁Bye")}


def record_session(root: Path, user: np.ndarray | None = None) -> Path:
    """A session recorded through the real recorder: the agent's text above and `user` as the mic."""
    user = speech_track() if user is None else user
    steps = len(user) // FRAME
    bus = EventBus()
    recorder = start_recording(bus, root, SessionMeta(voice="NATF0", role_prompt="test"))
    for s in range(steps):
        token, piece = AGENT_TEXT.get(s, (3, None))
        bus.publish(StepEvent(step=s, audio_time=s * 0.08, wall_time=0.0, timings_ms={"total": 40.0}, text_token=token,
                              text_piece=piece, user_pcm=user[s * FRAME:(s + 1) * FRAME].copy(),
                              agent_pcm=np.zeros(FRAME, np.float32)))  # fmt: skip
    recorder.close()
    return recorder.session_dir
