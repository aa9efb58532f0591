"""The step thread: microphone frames in, model frames out, one `StepEvent` per frame.

`DuplexRuntime` pulls `processor.frame_size`-sample frames at `processor.sample_rate`
(1920 at 24 kHz for PersonaPlex) from an audio endpoint's capture ring, resampling from
the device rate on this thread (never in the audio callback), calls
`processor.process`, pushes the result into the playback ring and publishes a
`StepEvent` on the `EventBus`. It is generic over the model: anything implementing
`FrameProcessor` can be driven.

Step numbering and track alignment
----------------------------------
Every input frame taken from the capture ring produces exactly one `StepEvent`, with
consecutive `step` numbers from 0 and `audio_time = step * frame_size / sample_rate`.
So the recorder's user and agent tracks, built by concatenating `user_pcm` and
`agent_pcm` of all events, stay sample-aligned with the step log and with the
microphone: sum of frames over events == input frames captured.

Late-frame policy (real-time endpoints only)
--------------------------------------------
A step is `late` when `processor.process` took longer than one frame of audio
(80 ms for PersonaPlex). Late steps let the capture backlog grow. Before each step the
runtime counts the complete frames waiting (`waiting`). If `waiting` exceeds
`policy.max_backlog_frames` (default 3 = 240 ms), the oldest `waiting - 1` frames are
dropped so that only the newest frame is processed; the model never hears the dropped
frames, and conversational lag stays bounded by about `max_backlog_frames` frames plus
one step. Each dropped frame is still published, in order, as its own StepEvent:
`filled="agent"`, `agent_pcm` silence, `user_pcm` the dropped microphone audio, no
text, empty `timings_ms`, nothing played for it. The step that follows the dropped
frames carries `dropped_in` = their number. Hence `sum(e.dropped_in)` equals the number
of `filled in ("agent", "both")` events, and `queue_in` (frames still waiting after the
frame being processed) never exceeds `max_backlog_frames`.

Endpoints that are not real time (a file processed as fast as possible) never drop:
the whole input is backlog by design.

On the output side nothing is dropped by the runtime; a step that is late leaves the
speaker without audio, which the endpoint counts as an underrun (StepEvent.underruns:
underruns since the previous event, plus one for a step whose processor had no audio ready,
`FrameResult.missing`, as a remote model's late network audio; xruns likewise for PortAudio status flags).

Microphone policies
-------------------
`muted`, and the half-duplex gate (`policy.half_duplex_gate`: echo handling without
headphones), replace the microphone frame by silence before the model sees it. The
gate is closed while the agent's output RMS in any of the last
`policy.gate_hold_frames` processed frames exceeds `policy.gate_threshold_rms`.
A replaced frame is marked `filled="user"` (`"both"` if it was also dropped). User-side
fields (`user_pcm`, `in_rms`, `in_peak`) always describe what the model was given.

Errors
------
An exception in `processor.process`, a failing audio callback or a dead stream does
not kill audio silently: the runtime publishes `NoticeEvent(level="error")`, keeps the
exception in `runtime.error`, closes the endpoint and the thread exits.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ppchat.constants import MAX_BACKLOG_FRAMES
from ppchat.engine.aec import EchoCanceller
from ppchat.engine.audio_io import StreamBuffers
from ppchat.engine.echo_path import EchoCancelledCapture
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.resample import StreamResampler
from ppchat.engine.ringbuffer import RingBuffer
from ppchat.errors import PPChatError

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """What the model made of one input frame."""

    pcm: np.ndarray  # float32 [frame_size], the agent's audio for this step
    text_token: int | None = None
    text_piece: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # per phase; the runtime sets "total"
    # A step computed elsewhere (a server) reports that step's time here; the runtime then
    # gives it as "total" and judges lateness by it instead of by the time `process` took.
    compute_ms: float | None = None
    missing: bool = False  # no agent audio had arrived for this frame: silence stands in (an underrun)


class FrameProcessor(Protocol):
    """A streaming speech model: one frame of user audio in, one frame of agent audio out."""

    frame_size: int  # 1920 for PersonaPlex
    sample_rate: int  # 24000 for PersonaPlex

    def process(self, pcm: np.ndarray) -> FrameResult:
        """Consume one float32 frame of `frame_size` samples; return the next agent frame."""
        ...

    # Optional: `thread_ended()`, called on the step thread as it ends (an MLX model destroys that
    # thread's streams there; see ModelPipeline.thread_ended).


class AudioEndpoint(Protocol):
    """Where frames come from and go to: a sound card (`DuplexAudio`) or an array (`ArrayAudio`)."""

    buffers: StreamBuffers
    capture_rate: int
    playback_rate: int
    realtime: bool  # False: input is all there at once and must not be dropped

    def start(self) -> None: ...

    def input_finished(self) -> bool:
        """True once no more samples will ever reach the capture ring."""
        ...

    def check(self) -> None:
        """Raise `AudioError` if the endpoint has failed."""
        ...

    def close(self) -> None: ...


@dataclass
class RuntimePolicy:
    """Tunable behaviour; fields may be changed while running (read once per step),
    except `gate_hold_frames`, which is read when the runtime is created."""

    max_backlog_frames: int = MAX_BACKLOG_FRAMES
    half_duplex_gate: bool = False
    gate_threshold_rms: float = 0.02
    gate_hold_frames: int = 2
    poll_seconds: float = 0.002  # how often the idle step thread looks for a new frame


class _CaptureFrames:
    """Turns device-rate capture samples into model-rate frames (step-thread side)."""

    def __init__(self, ring: RingBuffer, device_rate: int, sample_rate: int, frame_size: int) -> None:
        self._ring = ring
        self._frame_size = frame_size
        self._resampler = StreamResampler(device_rate, sample_rate)
        self._chunk = np.zeros(max(1, round(frame_size * device_rate / sample_rate)), dtype=np.float32)
        # Everything the capture ring can hold, converted, plus soxr's block granularity.
        staging = int(ring.capacity * sample_rate / device_rate) + 4 * frame_size
        self._staging = RingBuffer(staging)
        self._flushed = False

    def frames_waiting(self) -> int:
        """Complete model frames available now (converts whatever has arrived)."""
        while self._ring.available >= self._chunk.shape[0]:
            self._ring.read(self._chunk)
            self._staging.write(self._resampler.process(self._chunk))
        return self._staging.available // self._frame_size

    def flush(self) -> None:
        """End of input: convert the last partial chunk and the resampler's tail, once."""
        if self._flushed:
            return
        self._flushed = True
        rest = np.zeros(self._ring.available, dtype=np.float32)
        self._ring.read(rest)
        self._staging.write(self._resampler.process(rest, last=True))

    def read(self, out: np.ndarray) -> int:
        """Fill `out` with the next frame (zero-padded when the input ended early)."""
        return self._staging.read(out)


class _PlaybackFrames:
    """Converts model-rate frames to the device rate and queues them for the speaker."""

    def __init__(self, ring: RingBuffer, device_rate: int, sample_rate: int, frame_size: int) -> None:
        self._ring = ring
        self._resampler = StreamResampler(sample_rate, device_rate)
        self._device_frame = frame_size * device_rate / sample_rate

    def write(self, frame: np.ndarray, last: bool = False) -> None:
        self._ring.write(self._resampler.process(frame, last=last))

    def frames_queued(self) -> int:
        return int(self._ring.available // self._device_frame)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


class DuplexRuntime:
    """Runs `processor` against `audio` on its own thread, publishing to `bus`.

    Use as a context manager (`with DuplexRuntime(...) as rt:`), or call `start()` and
    `stop()`. The runtime owns the endpoint from then on: it starts it on the step
    thread and closes it when the thread ends. `join()` waits for the end of a finite
    input. `error` holds the exception that stopped it, if any.
    """

    def __init__(self, processor: FrameProcessor, audio: AudioEndpoint, bus: EventBus, policy: RuntimePolicy | None = None,
                 canceller: EchoCanceller | None = None) -> None:
        self.frame_size = int(processor.frame_size)
        self.sample_rate = int(processor.sample_rate)
        if self.frame_size <= 0 or self.sample_rate <= 0:
            raise ValueError(f"processor frame_size/sample_rate must be positive, got {self.frame_size}/{self.sample_rate}")
        self.processor = processor
        self.audio = audio
        self.bus = bus
        self.policy = policy or RuntimePolicy()
        self.muted = False
        self.error: BaseException | None = None
        self.steps = 0  # events published so far; the next event's `step`
        self._frame_seconds = self.frame_size / self.sample_rate
        # Built once the endpoint has started: a sound card may settle on another rate then.
        self._capture: _CaptureFrames | EchoCancelledCapture | None = None
        self._playback: _PlaybackFrames | None = None
        self._canceller = canceller
        self._aec_on = True
        self._notes_seen = 0
        self.echo: EchoCancelledCapture | None = None
        self._mic_frame = np.zeros(self.frame_size, dtype=np.float32)
        self._playback = _PlaybackFrames(audio.buffers.playback, audio.playback_rate, self.sample_rate, self.frame_size)
        self._frame = np.zeros(self.frame_size, dtype=np.float32)
        self._silence = np.zeros(self.frame_size, dtype=np.float32)
        self._recent_out_rms: collections.deque[float] = collections.deque(maxlen=max(1, self.policy.gate_hold_frames))
        self._mark_pending = False
        self._seen_underruns = 0
        self._seen_xruns = 0
        self._seen_lost = {"microphone": 0, "speaker": 0}
        self._stop = threading.Event()
        # Set by the step thread as its very last act. Waiting on it rather than Thread.join: a
        # Ctrl-C that lands inside join(timeout) makes CPython < 3.13 mark a running thread as
        # stopped, and the process would then exit while a step is inside MLX (std::terminate).
        self._done = threading.Event()
        self._started = False
        self._thread = threading.Thread(target=self._run, name="ppchat-step", daemon=True)

    # -- control (any thread) ------------------------------------------------------

    def start(self) -> DuplexRuntime:
        self._started = True
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the step thread to finish, wait for it, and make sure the endpoint is closed."""
        self._stop.set()
        if not self._started or self._done.wait(timeout):
            self.audio.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (finite input, error or stop); True if it has."""
        return self._done.wait(timeout) if self._started else True

    @property
    def running(self) -> bool:
        return self._started and not self._done.is_set()

    def mark(self) -> None:
        """Flag the next published event (`marked=True`). Marks within one frame merge."""
        self._mark_pending = True

    def __enter__(self) -> DuplexRuntime:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- step thread -----------------------------------------------------------------

    @property
    def cancels_echo(self) -> bool:
        """True when this runtime runs an echo canceller (a canceller and an endpoint with a far end)."""
        return self._canceller is not None and self.audio.buffers.echo is not None

    @property
    def aec_enabled(self) -> bool:
        """Whether the model hears the echo-cancelled microphone (if there is a canceller)."""
        return self._aec_on

    @aec_enabled.setter
    def aec_enabled(self, on: bool) -> None:
        # The canceller keeps adapting while off, so switching back on is immediate.
        self._aec_on = bool(on)
        echo = self.echo
        if echo is not None:
            echo.enabled = self._aec_on

    def _build_stages(self) -> None:
        """The rate converters (and the echo path) between the endpoint's rings and the model."""
        audio = self.audio
        # With a canceller and an endpoint that keeps the far end, the microphone goes through
        # the echo path (engine/echo_path.py); events then also carry the raw microphone.
        if self._canceller is not None and audio.buffers.echo is not None:
            echo = EchoCancelledCapture(audio.buffers.capture, audio.buffers.echo, audio.capture_rate, audio.playback_rate,
                                        self.sample_rate, self.frame_size, self._canceller, initial_delay_s=0.0)
            echo.enabled = self._aec_on
            self._capture = self.echo = echo
        else:
            self._capture = _CaptureFrames(audio.buffers.capture, audio.capture_rate, self.sample_rate, self.frame_size)
        self._playback = _PlaybackFrames(audio.buffers.playback, audio.playback_rate, self.sample_rate, self.frame_size)

    def _open(self) -> None:
        """Start the endpoint and build the stages between it and the model (on the step thread)."""
        self.audio.start()
        self._build_stages()
        self._publish_notes()
        if self.echo is not None:
            self._start_echo_path()

    def _run(self) -> None:
        try:
            self._open()
            if self._loop():
                self._drain_playback()
                self.bus.publish(NoticeEvent("info", f"audio input ended after {self.steps} frames", time.time()))
        except Exception as exc:  # reported to the user and logged, never swallowed
            log.exception("the step thread stopped")
            self.error = exc
            self.bus.publish(NoticeEvent("error", str(exc) or repr(exc), time.time()))
        finally:
            try:
                self.audio.close()
            except Exception as exc:
                log.exception("closing the audio device failed")
                self.bus.publish(NoticeEvent("warning", f"closing the audio device failed: {exc}", time.time()))
            thread_ended = getattr(self.processor, "thread_ended", None)
            if thread_ended is not None:
                thread_ended()
            self._done.set()

    def _publish_notes(self) -> None:
        """What the endpoint noted about its streams since the last call (layout, restarts)."""
        notes = self.audio.buffers.notes
        for note in notes[self._notes_seen:]:
            self.bus.publish(NoticeEvent("warning" if "echo" in note or "stopped" in note else "info", note, time.time()))
        self._notes_seen = len(notes)

    def _start_echo_path(self) -> None:
        reported = self.audio.buffers.echo_delay_s()
        if reported is not None and abs(reported) < self.echo.tracker.max_lag_s:
            self.echo.tracker.delay_s = reported
        where = f"{reported * 1000:.0f} ms by the sound card's clock" if reported is not None else "not reported"
        self.bus.publish(NoticeEvent("info", f"echo cancellation on; loop delay {where}, measured while the agent speaks", time.time()))

    def _next_frame(self) -> int:
        """Read the next model frame (and its raw microphone, with echo cancellation)."""
        n = self._capture.read(self._frame)
        if self.echo is not None:
            self.echo.read_raw(self._mic_frame)
        return n

    def _loop(self) -> bool:
        """Step until stopped (False) or the input ran out (True)."""
        policy = self.policy
        while not self._stop.is_set():
            self.audio.check()
            self._publish_notes()
            self._warn_on_overruns()
            waiting = self._capture.frames_waiting()
            if waiting == 0:
                if not self.audio.input_finished():
                    self._stop.wait(policy.poll_seconds)
                    continue
                self._capture.flush()
                if self._capture.frames_waiting() == 0:
                    if self._next_frame() > 0:  # final partial frame, zero-padded
                        return self._step(dropped=0, queue_in=0)
                    return True
                continue
            dropped = self._catch_up(waiting)
            self._next_frame()
            if not self._step(dropped=dropped, queue_in=waiting - 1 - dropped):
                return False
        return False

    def _catch_up(self, waiting: int) -> int:
        """The late-frame policy: with more than `max_backlog_frames` waiting on a real-time endpoint,
        drop (and publish) all but the newest; returns how many were dropped."""
        if not (self.audio.realtime and waiting > self.policy.max_backlog_frames):
            return 0
        for _ in range(waiting - 1):
            self._next_frame()
            self._publish_dropped()
        return waiting - 1

    def _warn_on_overruns(self) -> None:
        """A full ring loses audio outside the step log: say so (rare: needs a long stall)."""
        for name, ring in (("microphone", self.audio.buffers.capture), ("speaker", self.audio.buffers.playback)):
            lost = ring.dropped_samples - self._seen_lost[name]
            if lost:
                self._seen_lost[name] = ring.dropped_samples
                self.bus.publish(NoticeEvent(
                    "warning", f"the {name} buffer overflowed: {lost} samples lost (the audio stalled or a step blocked)", time.time()
                ))

    def _gate_mic(self) -> bool:
        """Replace the current frame by silence if muted or gated; True if replaced."""
        gated = self.policy.half_duplex_gate and bool(self._recent_out_rms) and max(self._recent_out_rms) > self.policy.gate_threshold_rms
        if self.muted:
            self._mic_frame.fill(0.0)  # muted means not recorded either
        if self.muted or gated:
            self._frame.fill(0.0)
            return True
        return False

    def _publish_dropped(self) -> None:
        user, replaced = self._take_user()
        self._publish(
            timings_ms={},
            user=user,
            agent=self._silence.copy(),
            filled="both" if replaced else "agent",
        )

    def _step(self, dropped: int, queue_in: int) -> bool:
        """Run the model on the current frame and publish; False if the model failed."""
        user, replaced = self._take_user()
        started = time.perf_counter()
        try:
            result = self.processor.process(user.copy())
        except Exception as exc:  # noqa: BLE001 - `_failed` reports and logs it, then the runtime stops cleanly
            return self._failed(exc)
        return self._deliver(user, replaced, result, (time.perf_counter() - started) * 1000.0, dropped, queue_in)

    def _take_user(self) -> tuple[np.ndarray, bool]:
        """The current frame as the model is to hear it, and whether silence replaced it (mute, gate)."""
        replaced = self._gate_mic()
        return self._frame.copy(), replaced

    def _failed(self, exc: Exception) -> bool:
        """A step failed: reported and logged, then the runtime stops cleanly."""
        log.exception("model step %d failed", self.steps)
        self.error = exc
        # A PPChatError is already a sentence for the user (a server's 0x05 through `talk --server`):
        # "model step 83 failed: PPChatError: ..." would blame the model for it.
        message = str(exc) if isinstance(exc, PPChatError) else f"model step {self.steps} failed: {type(exc).__name__}: {exc}"
        self.bus.publish(NoticeEvent("error", message, time.time()))
        return False

    def _deliver(self, user: np.ndarray, replaced: bool, result: FrameResult, elapsed_ms: float, dropped: int,
                 queue_in: int) -> bool:
        """Queue the agent's frame for playback and publish the step; False if the result is unusable."""
        try:
            agent = np.array(result.pcm, dtype=np.float32).reshape(-1)
            if agent.shape[0] != self.frame_size:
                raise ValueError(f"the processor returned {agent.shape[0]} samples, expected {self.frame_size}")
        except Exception as exc:  # noqa: BLE001 - as in `_step`
            return self._failed(exc)
        total_ms = elapsed_ms if result.compute_ms is None else float(result.compute_ms)
        self._playback.write(agent)
        self._recent_out_rms.append(_rms(agent))
        timings = {k: float(v) for k, v in result.timings_ms.items()}
        timings["total"] = total_ms  # measured here, so every processor reports it the same way
        self._publish(
            timings_ms=timings,
            user=user,
            agent=agent,
            filled="user" if replaced else None,
            text_token=result.text_token,
            text_piece=result.text_piece,
            late=total_ms > self._frame_seconds * 1000.0,
            dropped_in=dropped,
            queue_in=queue_in,
            missing=result.missing,
        )
        return True

    def _publish(self, *, timings_ms: dict[str, float], user: np.ndarray, agent: np.ndarray, filled: str | None,
                 text_token: int | None = None, text_piece: str | None = None, late: bool = False,
                 dropped_in: int = 0, queue_in: int = 0, missing: bool = False) -> None:
        buffers = self.audio.buffers
        underruns, xruns = buffers.underruns, buffers.xruns
        marked, self._mark_pending = self._mark_pending, False
        event = StepEvent(
            step=self.steps,
            audio_time=self.steps * self._frame_seconds,
            wall_time=time.time(),
            timings_ms=timings_ms,
            text_token=text_token,
            text_piece=text_piece,
            in_rms=_rms(user),
            in_peak=_peak(user),
            out_rms=_rms(agent),
            out_peak=_peak(agent),
            queue_in=queue_in,
            queue_out=self._playback.frames_queued(),
            late=late,
            dropped_in=dropped_in,
            underruns=underruns - self._seen_underruns + int(missing),
            xruns=xruns - self._seen_xruns,
            filled=filled,
            marked=marked,
            user_pcm=user,
            agent_pcm=agent,
        )
        if self.echo is not None:
            event.mic_pcm = self._mic_frame.copy()
            event.aec = self.echo.enabled
            event.erle_db = self.echo.erle_db
        self._seen_underruns, self._seen_xruns = underruns, xruns
        self.steps += 1
        self.bus.publish(event)

    def _drain_playback(self) -> None:
        """After the input ended, let a real-time endpoint play what is still queued."""
        self._playback.write(self._silence[:0], last=True)
        if not self.audio.realtime:
            return
        ring = self.audio.buffers.playback
        deadline = time.monotonic() + ring.capacity / self.audio.playback_rate + 1.0
        while ring.available > 0 and not self._stop.is_set() and time.monotonic() < deadline:
            self.audio.check()
            self._stop.wait(self.policy.poll_seconds)
