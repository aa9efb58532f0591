"""A recorded session's events again, in time (its transcript: `engine.transcript`)."""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable, Iterator

from ppchat.constants import FRAME_SECONDS
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.sessions.store import Session


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
