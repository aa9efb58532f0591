"""The agent's text stream as people read it, built in one place for the console, replay and export.

Each step's token is a SentencePiece piece (`▁` starts a word), PAD or EPAD (spec §5.4).
`Transcript` groups pieces into turns as they stream in: a turn ends once `turn_gap_steps`
steps have passed without text, and the next piece opens a new, time-stamped turn. The
console draws it live; `transcript()` runs the same rule over a whole recording for replay
and export. `reference_text_entry` is the reference offline tool's per-frame list instead
(spec §7.2), and `format_clock` writes every time stamp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ppchat.constants import EPAD_ID, FRAME_SECONDS, NO_TEXT_IDS, PAD_ID, WORD_START
from ppchat.engine.events import StepEvent


def format_clock(seconds: float, *, tenths: bool = True) -> str:
    """`mm:ss.t`, or `h:mm:ss.t` from one hour on; with `tenths=False`, whole seconds rounded down
    (`mm:ss`, as a running clock shows them)."""
    if tenths:
        hours, rest = divmod(round(seconds * 10), 36000)
        minutes, rest = divmod(rest, 600)
        secs, tenth = divmod(rest, 10)
        clock = f"{minutes:02d}:{secs:02d}.{tenth}"
    else:
        hours, rest = divmod(max(0, int(seconds)), 3600)
        clock = f"{rest // 60:02d}:{rest % 60:02d}"
    return f"{hours}:{clock}" if hours else clock


def piece_text(event: StepEvent) -> str | None:
    """The text a step adds (`▁` as a space), or None for PAD, EPAD and steps without text."""
    if event.text_token in NO_TEXT_IDS or not event.text_piece:
        return None
    return event.text_piece.replace(WORD_START, " ")


def reference_text_entry(token: int | None, piece: str | None) -> str:
    """One frame's entry in the reference offline tool's JSON list: "EPAD", "PAD" or the piece."""
    if token == EPAD_ID:
        return "EPAD"
    if token == PAD_ID or (token is None and not piece):
        return "PAD"
    return (piece or "").replace(WORD_START, " ")


@dataclass
class Entry:
    start: float  # audio time of the first piece (or of the mark), seconds
    text: str = ""
    kind: str = "turn"  # "turn" or "mark"
    first_step: int = 0
    last_step: int = 0  # the step of the newest piece

    @property
    def end(self) -> float:
        """End of the frame of the last piece."""
        return (self.last_step + 1) * FRAME_SECONDS


class Transcript:
    """Turns built from a stream of StepEvents (and marks, as entries of their own).

    Gaps are counted in step numbers, so steps missing from a recording's log count as
    silence just as live steps without text do. `max_entries` keeps the newest entries only.
    """

    def __init__(self, turn_gap_steps: int = 20, max_entries: int | None = 300, marks: bool = True) -> None:
        self.turn_gap_steps = turn_gap_steps
        self.max_entries = max_entries
        self.marks = marks
        self.entries: list[Entry] = []
        self.silent_steps = 0
        self._last_step: int | None = None

    def clear(self) -> None:
        self.entries.clear()
        self.silent_steps = 0
        self._last_step = None

    @property
    def speaking(self) -> bool:
        """True while the last turn is still open (text came recently)."""
        return bool(self.entries) and self.entries[-1].kind == "turn" and self.silent_steps < self.turn_gap_steps

    def add(self, ev: StepEvent) -> bool:
        """Take one step; True if the visible text changed."""
        was_speaking = self.speaking
        if self._last_step is not None:
            self.silent_steps += max(0, ev.step - self._last_step - 1)  # steps the log does not have
        self._last_step = ev.step
        changed = False
        if ev.marked and self.marks:
            self._append(Entry(ev.audio_time, kind="mark", first_step=ev.step, last_step=ev.step))
            changed = True
        piece = piece_text(ev)
        if piece:
            if self.speaking:
                turn = self.entries[-1]
                turn.text += piece
                turn.last_step = ev.step
            else:
                self._append(Entry(ev.audio_time, piece.lstrip(), first_step=ev.step, last_step=ev.step))
            self.silent_steps = 0
            return True
        self.silent_steps += 1
        return changed or (was_speaking and not self.speaking)

    def _append(self, entry: Entry) -> None:
        self.entries.append(entry)
        if self.max_entries is not None and len(self.entries) > self.max_entries:
            del self.entries[: len(self.entries) - self.max_entries]

    def plain_lines(self) -> list[str]:
        return [f"{format_clock(e.start, tenths=False)} " + ("◆ mark" if e.kind == "mark" else e.text) for e in self.entries]


class Utterance(NamedTuple):
    start: float  # start of the frame of the first piece, seconds
    end: float  # end of the frame of the last piece
    text: str


def transcript(steps: Iterable[StepEvent], pause_s: float = 1.0) -> list[Utterance]:
    """The agent's words of a whole recording, one utterance per turn, split where it paused for
    `pause_s` or more; whitespace is normalised and empty turns are left out."""
    turns = Transcript(turn_gap_steps=math.ceil(pause_s / FRAME_SECONDS - 1e-9), max_entries=None, marks=False)
    for event in steps:
        turns.add(event)
    utterances = []
    for turn in turns.entries:
        text = " ".join(turn.text.split())
        if text:
            utterances.append(Utterance(turn.first_step * FRAME_SECONDS, turn.end, text))
    return utterances
