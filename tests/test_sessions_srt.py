"""SRT cues: split at pauses, at most 7 s and two lines of 42 characters each (issue 11.13)."""

from __future__ import annotations

import re

import numpy as np

from ppchat.engine.events import EventBus, StepEvent
from ppchat.sessions.export import SRT_LINE_CHARS, SRT_MAX_SECONDS, export
from ppchat.sessions.recorder import start_recording
from ppchat.sessions.schema import SessionMeta
from ppchat.sessions.store import load_session
from ppchat.sessions.user_transcript import UserLine, write_user_transcript

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


def record(root, pieces: dict[int, str], steps: int):
    bus = EventBus()
    recorder = start_recording(bus, root, SessionMeta())
    for s in range(steps):
        piece = pieces.get(s)
        bus.publish(StepEvent(step=s, audio_time=s * 0.08, wall_time=0.0, timings_ms={"total": 40.0},
                              text_token=1000 + s if piece else 3, text_piece=piece,
                              user_pcm=np.zeros(1920, np.float32), agent_pcm=np.zeros(1920, np.float32)))  # fmt: skip
    recorder.close()
    return load_session(recorder.session_dir)


def parse_srt(text: str) -> list[tuple[float, float, list[str]]]:
    def seconds(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return round(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000, 3)

    cues = []
    for number, block in enumerate(text.strip().split("\n\n"), start=1):
        lines = block.split("\n")
        assert lines[0] == str(number)
        start, end = re.fullmatch(r"(\S+) --> (\S+)", lines[1]).groups()
        cues.append((seconds(start), seconds(end), lines[2:]))
    return cues


def babble(steps: int, every: int = 2) -> dict[int, str]:
    """A word every `every` steps, some split into two pieces, with no pause: the demo model's habit."""
    pieces, n = {}, 0
    for s in range(0, steps, every):
        word = WORDS[n % len(WORDS)]
        n += 1
        if len(word) > 4 and s + 1 < steps and every > 1:
            pieces[s], pieces[s + 1] = "▁" + word[:3], word[3:]
        else:
            pieces[s] = "▁" + word
    return pieces


def test_a_29_second_monologue_becomes_short_two_line_cues(tmp_path):
    steps = 363  # 29 s
    pieces = babble(steps)
    session = record(tmp_path, pieces, steps)
    [srt] = export(session, tmp_path / "out", ("srt",))
    cues = parse_srt(srt.read_text())
    assert len(cues) > 29 / SRT_MAX_SECONDS
    for start, end, lines in cues:
        assert 0 < end - start <= SRT_MAX_SECONDS + 1e-9
        assert 1 <= len(lines) <= 2 and all(len(line) <= SRT_LINE_CHARS for line in lines)
    assert all(a[1] <= b[0] for a, b in zip(cues, cues[1:]))  # in order, no overlap
    spoken = "".join(pieces[s] for s in sorted(pieces)).replace("▁", " ").split()
    assert " ".join(" ".join(lines) for _, _, lines in cues).split() == spoken  # every word, once, in order
    assert cues[0][0] == 0.0 and cues[-1][1] == round(((max(pieces) + 1) * 0.08), 3)


def test_a_pause_ends_a_cue(tmp_path):
    pieces = {5: "▁Hello", 6: ",", 8: "▁world", 20: "▁again"}  # 0.88 s of silence before "again"
    session = record(tmp_path, pieces, 30)
    [srt] = export(session, tmp_path / "out", ("srt",))
    assert parse_srt(srt.read_text()) == [(0.4, 0.72, ["Hello, world"]), (1.6, 1.68, ["again"])]


def test_a_long_user_line_is_split_too(tmp_path):
    session_dir = record(tmp_path, {3: "▁Hi"}, 300).path
    said = " ".join(WORDS * 3)
    write_user_transcript(session_dir, [UserLine(2.0, 20.0, said)], model="test", language=None)
    [srt] = export(load_session(session_dir), tmp_path / "out", ("srt",))
    cues = parse_srt(srt.read_text())
    assert cues[0][2] == ["Agent: Hi"]
    user = cues[1:]
    assert len(user) >= 3 and user[0][2][0].startswith("User: ") and user[0][0] == 2.0 and user[-1][1] == 20.0
    for start, end, lines in user:
        assert end - start <= SRT_MAX_SECONDS + 1e-9 and len(lines) <= 2 and all(len(x) <= SRT_LINE_CHARS for x in lines)
    words = " ".join(" ".join(lines) for _, _, lines in user).replace("User: ", "").split()
    assert words == said.split()
