"""Records a live conversation from the event bus into a session directory.

The recorder runs its own thread: the engine only publishes, and publishing never
waits on the recorder. Every `StepEvent` becomes one 1920-sample frame in `user.wav`
and in `agent.wav` (silence where its pcm is None) and one line in `steps.jsonl`, so
frame index == step in both tracks. Files are flushed and fsynced every
`flush_interval` seconds (1 s by default: a crash loses at most that much; three
small fsyncs per second are cheap next to 24 kHz audio).

Back-pressure: the recorder's bus queue holds `queue_events` events (375 = 30 s of
steps). If the disk stalls for longer, the bus drops the oldest events. The recorder
sees the hole in the step numbers, writes silence for the missing steps in both
tracks (alignment holds), logs a `gap` record, counts them in `stats.lost_steps` and
publishes a warning notice.

Disk full or any other write error stops the recording, never the conversation:
the recorder publishes an error `NoticeEvent`, keeps it in `notices`, cuts both tracks
and the log back to the last flush that reached all three (so they end at the same
step, and `stats` describe exactly that), and marks `session.json` "stopped" if it
still can. If the files can't even be created, nothing is left behind; nor, with
`keep_empty=False` (a served conversation whose client left before its first step), is a
recording that ended with no step in it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from ppchat.constants import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.sessions.files import RecordingStopped
from ppchat.sessions.jsonl import JsonlWriter
from ppchat.sessions.liveness import mark_recording, unmark_recording
from ppchat.sessions.schema import (
    AGENT_WAV,
    MIC_WAV,
    SESSION_FILES,
    STEPS_JSONL,
    USER_WAV,
    SessionInfo,
    SessionMeta,
    StepStats,
    gap_record,
    notice_record,
    step_record,
    write_session_info,
)
from ppchat.sessions.stats import StepStatsBuilder
from ppchat.sessions.store import new_session_dir
from ppchat.sessions.wav_writer import WavWriter

log = logging.getLogger(__name__)

_SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.float32)


class Recorder:
    """Subscribe to `bus` and record into the (existing, empty) `session_dir` until `close()`.

    Raises `RecordingStopped` (a `SessionError`) at once if the files can't be created.
    """

    def __init__(
        self,
        bus: EventBus,
        session_dir: Path,
        meta: SessionMeta,
        *,
        started: datetime | None = None,
        flush_interval: float = 1.0,
        queue_events: int = 375,
        mic_track: bool = False,
        keep_empty: bool = True,
    ):
        self.session_dir = Path(session_dir)
        self.discarded = False  # set once closed with nothing recorded and `keep_empty` False: no folder left
        self.notices: list[NoticeEvent] = []  # what went wrong, for whoever asks later
        self.stop_reason: str | None = None
        self._cut_short: str | None = None  # set by close(stop_reason=...)
        self._bus = bus
        self._flush_interval = flush_interval
        self._keep_empty = keep_empty
        self._info = SessionInfo(meta=meta, started=started or datetime.now().astimezone(), pid=os.getpid())
        self._stats = StepStatsBuilder()
        self._next_step = 0
        # The last point where every file was flushed: steps, statistics and each file's length.
        self._safe_steps = 0
        self._safe_stats = self._stats.result()
        self._safe_lengths: tuple[int, ...] = ()
        self._warned_frame_size = False
        self._mic: WavWriter | None = None  # mic.wav, with echo cancellation (`mic_track`)
        self._user, self._agent, self._log = self._open_files(mic_track)
        self._safe_lengths = tuple(w.committed for w in self._writers)
        mark_recording(self.session_dir)
        self._sub = bus.subscribe(queue_events, name="recorder")
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppchat-recorder", daemon=True)
        self._thread.start()

    @property
    def status(self) -> str:
        """"recording", then "complete" or "stopped" (see `stop_reason`)."""
        return self._info.status

    @property
    def stats(self) -> StepStats:
        """The session's statistics as of the last flush (about once a second), from any thread."""
        return self._safe_stats

    def close(self, timeout: float = 10.0, stop_reason: str | None = None) -> None:
        """Record what was published so far, finalise the files and `session.json`. Never raises.

        With `stop_reason` the session is marked "stopped" for that reason (the conversation was
        cut short, e.g. an interrupted `respond`) rather than "complete".
        """
        if stop_reason is not None and self.stop_reason is None:
            self._cut_short = stop_reason
        self._stop.set()
        # An event, not Thread.join: Ctrl-C inside join(timeout) makes CPython < 3.13 forget the thread.
        if not self._finished.wait(timeout):
            log.warning("the recorder is still writing %s after %.0f s (slow disk?)", self.session_dir, timeout)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_files(self, mic_track: bool) -> tuple[WavWriter, WavWriter, JsonlWriter]:
        opened: list = []
        try:
            opened.append(WavWriter(self.session_dir / USER_WAV, sample_rate=SAMPLE_RATE))
            opened.append(WavWriter(self.session_dir / AGENT_WAV, sample_rate=SAMPLE_RATE))
            if mic_track:
                self._mic = WavWriter(self.session_dir / MIC_WAV, sample_rate=SAMPLE_RATE)
                opened.append(self._mic)
            opened.append(JsonlWriter(self.session_dir / STEPS_JSONL))
            write_session_info(self.session_dir, self._info)
        except RecordingStopped as exc:
            for writer in opened:
                writer.abandon()
            self._remove_partial_folder()
            raise RecordingStopped(
                f"cannot record this session: {exc}. Choose a writable folder with --sessions-dir"
            ) from exc
        return opened[0], opened[1], opened[-1]

    def _remove_partial_folder(self) -> None:
        """Leave nothing behind of a recording that could not start (a 0-byte user.wav would list
        as a damaged session forever). What can't be removed lists as "failed" and `sessions clean`
        removes it."""
        for f in SESSION_FILES:
            try:
                (self.session_dir / f.name).unlink()
            except OSError:
                pass
        try:
            self.session_dir.rmdir()  # only if empty: never anything that isn't ours
        except OSError:
            pass

    @property
    def _writers(self) -> tuple[WavWriter | JsonlWriter, ...]:
        mic = () if self._mic is None else (self._mic,)
        return (self._user, self._agent, *mic, self._log)

    # --- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        status = "complete"
        try:
            last_flush = time.monotonic()
            wait = min(0.1, self._flush_interval)
            while not self._stop.is_set():
                first = self._sub.get(timeout=wait)
                for event in ([first] if first is not None else []) + self._sub.drain():
                    self._record(event)
                if time.monotonic() - last_flush >= self._flush_interval:
                    self._flush()
                    last_flush = time.monotonic()
            for event in self._sub.drain():
                self._record(event)
            self._flush()
        except RecordingStopped as exc:
            status = "stopped"
            self._stop_recording(str(exc))
        except Exception as exc:  # a recorder bug must not end the conversation
            log.exception("recorder failed")
            status = "stopped"
            self._stop_recording(f"internal error ({type(exc).__name__}: {exc})")
        finally:
            self._sub.close()
            try:
                self._finish(status)
            finally:
                self._finished.set()

    def _record(self, event: object) -> None:
        if isinstance(event, StepEvent):
            self._record_step(event)
        elif isinstance(event, NoticeEvent):
            self._log.append(notice_record(self._next_step * FRAME_SECONDS, event))

    def _record_step(self, event: StepEvent) -> None:
        if event.step < self._next_step:
            return  # already recorded (or a step counter that went back): writing it would break alignment
        if event.step > self._next_step:
            self._fill_gap(event.step - self._next_step)
        self._user.append(self._frame(event.user_pcm))
        self._agent.append(self._frame(event.agent_pcm))
        if self._mic is not None:  # the raw microphone; what the model heard when there is none
            self._mic.append(self._frame(event.mic_pcm if event.mic_pcm is not None else event.user_pcm))
        self._log.append(step_record(event))
        self._stats.add(event)
        self._next_step = event.step + 1

    def _fill_gap(self, count: int) -> None:
        silence = np.zeros(count * FRAME_SAMPLES, dtype=np.float32)
        self._user.append(silence)
        self._agent.append(silence)
        if self._mic is not None:
            self._mic.append(silence)
        self._log.append(gap_record(self._next_step, count))
        self._stats.add_lost(count)
        self._notify(
            "warning",
            f"The recorder fell behind (slow disk?): {count} steps ({count * FRAME_SECONDS:.2f} s) from "
            f"{self._next_step * FRAME_SECONDS:.2f} s on were not recorded; they are silence in the recording.",
        )
        self._next_step += count

    def _frame(self, pcm: np.ndarray | None) -> np.ndarray:
        if pcm is None:
            return _SILENCE
        frame = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if frame.size == FRAME_SAMPLES:
            return frame
        # Keep the tracks aligned with the steps whatever the engine sent.
        if not self._warned_frame_size:
            self._warned_frame_size = True
            log.warning("step frame of %d samples (expected %d): padded or cut", frame.size, FRAME_SAMPLES)
        fitted = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        fitted[: min(frame.size, FRAME_SAMPLES)] = frame[:FRAME_SAMPLES]
        return fitted

    def _flush(self) -> None:
        # Audio before the log, so a step line never points at audio that isn't on disk.
        self._user.flush()
        self._agent.flush()
        if self._mic is not None:
            self._mic.flush()
        self._log.flush()
        self._safe_steps = self._next_step
        self._safe_stats = self._stats.result()
        self._safe_lengths = tuple(w.committed for w in self._writers)

    def _cut_to_last_flush(self) -> None:
        """After a failed write: cut every file back to the last flush that reached all of them."""
        for writer, length in zip(self._writers, self._safe_lengths, strict=True):
            try:
                writer.cut(length)
            except RecordingStopped as exc:
                log.info("could not cut %s back to the last flush (loading warns of unequal tracks): %s", writer.path, exc)

    def _stop_recording(self, reason: str) -> None:
        self._sub.close()  # stop queueing events nobody will write
        self.stop_reason = reason
        self._notify(
            "error",
            f"Recording stopped: {reason}. The conversation goes on; the first {self._safe_steps * FRAME_SECONDS:.1f} s "
            f"are saved in {self.session_dir}.",
        )

    def _finish(self, status: str) -> None:
        writers = self._writers
        if status == "stopped":
            self._cut_to_last_flush()
        for writer in writers:
            writer.abandon()  # everything worth keeping was flushed
        if status == "complete" and self._next_step == 0 and not self._keep_empty:
            # No step, so no audio at all (both tracks are written only by steps): nothing to keep.
            self._remove_partial_folder()
            self.discarded = not self.session_dir.exists()
            if self.discarded:
                unmark_recording(self.session_dir)
                return
        if status == "complete" and self._cut_short is not None:
            status, self.stop_reason = "stopped", self._cut_short
        info = self._info
        info.status = status
        info.stop_reason = self.stop_reason
        info.duration_s = self._safe_steps * FRAME_SECONDS
        info.stats = self._safe_stats
        try:
            write_session_info(self.session_dir, info)
        except RecordingStopped as exc:
            # session.json keeps "recording"; the next `ppchat sessions` repairs it.
            log.warning("could not finalise the recording: %s", exc)
        finally:
            unmark_recording(self.session_dir)

    def _notify(self, level: str, message: str) -> None:
        notice = NoticeEvent(level, message, wall_time=time.time())
        self.notices.append(notice)
        # The notice is what the user sees (console, status lines, monitor); the log keeps a copy
        # below warning level so that a stderr log handler doesn't print it a second time.
        log.info("notice (%s): %s", level, message)
        self._bus.publish(notice)


def start_recording(bus: EventBus, root: Path, meta: SessionMeta, **options) -> Recorder:
    """Record into a new session folder under `root`, named after the start time.

    Subscribe before the engine publishes its first step, so step 0 is recorded.
    `options` go to `Recorder`. Raises `SessionError` if the folder can't be created.
    """
    started = datetime.now().astimezone()
    return Recorder(bus, new_session_dir(root, started), meta, started=started, **options)
