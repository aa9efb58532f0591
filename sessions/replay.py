"""Headless replay of a recorded session: the transcript, and the events again in time.

The transcript comes from the agent's text stream (its inner monologue, spec §5.4):
each step's token is a SentencePiece piece (`▁` = word start), PAD (3) or EPAD (0).
Pieces join into words; a run of non-text steps of at least `pause_s` ends an
utterance.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from ppchat.constants import FRAME_SECONDS, NO_TEXT_IDS, WORD_START
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.engine.transcript import format_clock
from ppchat.sessions.store import Session


class Utterance(NamedTuple):
    start: float  # audio time of the first piece, seconds
    end: float  # end of the frame of the last piece
    text: str


def piece_text(event: StepEvent) -> str | None:
    """The text a step adds to the transcript (`▁` as a space), or None for PAD/EPAD/no text."""
    if event.text_token in NO_TEXT_IDS or not event.text_piece:
        return None
    return event.text_piece.replace(WORD_START, " ")


def transcript(session: Session | Iterable[StepEvent], pause_s: float = 1.0) -> list[Utterance]:
    """The agent's words grouped into utterances, split where it paused for `pause_s` or more."""
    steps = session.steps if isinstance(session, Session) else session
    utterances: list[Utterance] = []
    pieces: list[str] = []
    first = last = 0
    for event in steps:
        text = piece_text(event)
        if text is None:
            continue
        if pieces and (event.step - last - 1) * FRAME_SECONDS >= pause_s:
            utterances.append(_utterance(first, last, pieces))
            pieces = []
        if not pieces:
            first = event.step
        pieces.append(text)
        last = event.step
    if pieces:
        utterances.append(_utterance(first, last, pieces))
    return [u for u in utterances if u.text]


def _utterance(first_step: int, last_step: int, pieces: list[str]) -> Utterance:
    return Utterance(first_step * FRAME_SECONDS, (last_step + 1) * FRAME_SECONDS, " ".join("".join(pieces).split()))


def format_transcript(utterances: list[Utterance]) -> str:
    """One `[mm:ss.t] text` line per utterance."""
    return "".join(f"[{format_clock(u.start)}] {u.text}\n" for u in utterances)


def play(
    session: Session,
    *,
    speed: float = 1.0,
    start: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[StepEvent | NoticeEvent]:
    """Yield the recorded steps and notices from audio time `start` on, paced like the recording.

    `speed` 2.0 plays twice as fast; `math.inf` yields without waiting. Steps carry their
    `user_pcm`/`agent_pcm` frames from the tracks. A consumer that falls behind is not
    waited for: later events come at once until it has caught up with the schedule.
    To seek, start a new `play` at the new offset.
    """
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    first_step = math.ceil(start / FRAME_SECONDS - 1e-9)
    steps = ((event.step * FRAME_SECONDS, 1, event) for event in session.steps if event.step >= first_step)
    notices = ((t, 0, notice) for t, notice in session.notices if t >= start - 1e-9)
    origin = clock()
    for t, _, event in heapq.merge(notices, steps, key=lambda item: item[:2]):
        delay = origin + (t - start) / speed - clock()
        if delay > 0:
            sleep(delay)
        if isinstance(event, StepEvent):
            user, agent = session.frame_audio(event.step)
            event = dataclasses.replace(event, user_pcm=user, agent_pcm=agent)
        yield event
