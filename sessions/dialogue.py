"""Both sides of a conversation as one list of timed lines.

The agent's lines are its inner-monologue utterances (`engine.transcript.transcript`); the user's
come from `ppchat transcribe` (`user_transcript.json`). Full duplex means they can
overlap: lines are ordered by when they start.
"""

from __future__ import annotations

from typing import NamedTuple

from ppchat.engine.transcript import format_clock, transcript
from ppchat.sessions.store import Session

AGENT = "agent"
USER = "user"
LABELS = {AGENT: "Agent", USER: "User"}


class Line(NamedTuple):
    start: float
    end: float
    speaker: str  # AGENT or USER
    text: str


def dialogue(session: Session) -> list[Line]:
    agent = [Line(u.start, u.end, AGENT, u.text) for u in transcript(session.steps)]
    user = [Line(u.start, u.end, USER, u.text) for u in session.user_lines if u.text.strip()]
    return sorted(agent + user, key=lambda line: (line.start, line.end))


def has_user_side(session: Session) -> bool:
    return any(u.text.strip() for u in session.user_lines)


def line_text(line: Line, labelled: bool) -> str:
    """The words of a line, after `Agent: `/`User: ` when both sides are shown."""
    return f"{LABELS[line.speaker]}: {line.text}" if labelled else line.text


def format_dialogue(session: Session) -> str:
    """One `[mm:ss.t] text` line per utterance; with `Agent:`/`User:` once the user's side is transcribed."""
    labelled = has_user_side(session)
    return "".join(f"[{format_clock(line.start)}] {line_text(line, labelled)}\n" for line in dialogue(session))
