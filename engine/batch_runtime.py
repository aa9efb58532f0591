"""The step thread of many conversations: one batched frame for all of them (`ppchat serve --max-conversations N`).

`BatchRuntime` owns a `BatchPipeline` and the only thread that touches it (MLX evaluates a graph
only on the thread that built it). Each conversation is a `BatchLane`: a `DuplexRuntime` without a
thread of its own, so it keeps everything a single conversation has — its audio endpoint, its own
`EventBus` and step numbering, the late-frame policy, the mute, one `StepEvent` per frame — while
this thread takes its frames and steps them together with the others'.

Pacing: a batched frame runs once every lane has a frame waiting, or once `gather_s` (one frame,
80 ms) has passed since the first lane had one. A lane whose client is behind then hears silence for
that frame, recorded as such (`filled="user"`): a row of the batch steps whether it has audio or
not, and a late client must not stall the others. Its late audio is then backlog, bounded by the
late-frame policy. With no lane ready nothing runs, as a single conversation waits for its
microphone.

Joins and leaves run between frames: `condition` (the prompts, on a one-row generator, during
which no frame runs — BENCHMARKS.md has the prefill times), `add` (the conditioned conversation
takes a free row), and a lane's `stop` or the end of its input. A failing endpoint ends its lane
alone; a failing batched frame ends every lane with an error notice, and the thread takes new ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from ppchat.constants import FRAME_SECONDS
from ppchat.engine.batch import BatchPipeline, Conditioned
from ppchat.engine.events import EventBus, NoticeEvent
from ppchat.engine.runtime import AudioEndpoint, DuplexRuntime, FrameResult, RuntimePolicy
from ppchat.errors import PPChatError

log = logging.getLogger(__name__)


class BatchLane(DuplexRuntime):
    """One conversation of a `BatchRuntime`; `start` blocks until it has a row, `stop` until it left."""

    def __init__(self, batch: BatchRuntime, conditioned: Conditioned, audio: AudioEndpoint, bus: EventBus,
                 policy: RuntimePolicy | None = None) -> None:
        super().__init__(batch.pipeline, audio, bus, policy)
        self._batch = batch
        self.conditioned = conditioned
        self.row: int | None = None
        self._final = False  # the last, partial input frame has been read (zero-padded)

    def start(self) -> BatchLane:
        self._started = True
        try:
            self._batch.add(self)
        except BaseException:
            self._done.set()  # it never ran: a `stop` has nothing to wait for
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._batch.wake()
        if not self._started or self._done.wait(timeout):
            self.audio.close()

    # -- on the batch's thread -------------------------------------------------------

    def _poll(self) -> int | None:
        """Frames ready for the next batched frame (0: none yet), or None once the input ended and all was stepped."""
        if self._final:
            return 1
        self.audio.check()
        self._publish_notes()
        self._warn_on_overruns()
        waiting = self._capture.frames_waiting()
        if waiting or not self.audio.input_finished():
            return waiting
        self._capture.flush()
        waiting = self._capture.frames_waiting()
        if waiting:
            return waiting
        self._final = self._next_frame() > 0
        return 1 if self._final else None

    def _take(self, waiting: int) -> tuple[np.ndarray, bool, int, int]:
        """This lane's input for the batched frame: (frame, silence stood in, dropped before it, still queued)."""
        if waiting == 0:  # the client is behind: this row hears silence, and says so
            self._frame.fill(0.0)
            return self._frame.copy(), True, 0, 0
        if self._final:
            self._final = False
            dropped = 0
        else:
            dropped = self._catch_up(waiting)
            self._next_frame()
        user, replaced = self._take_user()
        return user, replaced, dropped, waiting - 1 - dropped

    def _finish(self, error: BaseException | None, input_ended: bool) -> None:
        if error is not None:
            self.error = error
            self.bus.publish(NoticeEvent("error", str(error) or repr(error), time.time()))
        elif input_ended:
            self._playback.write(self._silence[:0], last=True)
            self.bus.publish(NoticeEvent("info", f"audio input ended after {self.steps} frames", time.time()))
        try:
            self.audio.close()
        except Exception as exc:
            log.exception("closing the audio endpoint failed")
            self.bus.publish(NoticeEvent("warning", f"closing the audio endpoint failed: {exc}", time.time()))
        self._done.set()


class BatchRuntime:
    """Runs up to `capacity` `BatchLane`s in one batched step on its own thread.

    `make_pipeline` builds the `BatchPipeline` on that thread; `piece` turns a text token into
    its text. `start` returns once the pipeline is built and warmed up.
    """

    def __init__(self, make_pipeline: Callable[[], BatchPipeline], piece: Callable[[int], str],
                 gather_s: float = FRAME_SECONDS, poll_s: float = 0.002, warm_up_frames: int = 4) -> None:
        self._make_pipeline = make_pipeline
        self.pipeline: BatchPipeline | None = None
        self._piece = piece
        self.gather_s = gather_s
        self.poll_s = poll_s
        self._warm_up_frames = warm_up_frames
        self._lanes: dict[int, BatchLane] = {}
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closing = False
        self._ready = threading.Event()
        # Set by the step thread as its very last act; waited on rather than Thread.join, which a
        # Ctrl-C landing inside it (CPython < 3.13) ends early with the thread still inside MLX.
        self._done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ppchat-batch-step", daemon=True)

    @property
    def capacity(self) -> int:
        return self.pipeline.capacity

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def start(self) -> BatchRuntime:
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error
        return self

    def close(self, timeout: float = 10.0) -> None:
        """End every lane (its input counts as ended) and the thread."""
        self._closing = True
        self.wake()
        if self._thread.is_alive():
            self._done.wait(timeout)

    def wake(self) -> None:
        self._wake.set()

    # -- from any thread: run on the step thread, between frames ---------------------------

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the step thread between two frames and return its result (or raise its exception)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            done.set()

        self._calls.put(run)
        self.wake()
        while not done.wait(0.5):
            if self._done.is_set():
                raise PPChatError("the batch step thread has stopped; restart `ppchat serve`")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def condition(self, voice, prompt_text: str, seed: int | None, progress=None) -> Conditioned:
        """Run a conversation's prompts (on the step thread: no frame runs meanwhile, so a client that
        leaves during them has them given up through `progress`, `BatchPipeline.condition`)."""
        return self.call(lambda: self.pipeline.condition(voice, prompt_text, seed, progress))

    def add(self, lane: BatchLane) -> None:
        """Give `lane` a row; it steps from the next batched frame on."""
        def admit() -> None:
            if self._closing:
                raise PPChatError("the server is shutting down")
            if not self.pipeline.free_rows:
                raise PPChatError(f"all {self.capacity} conversations of this batch are taken")
            lane.row = self.pipeline.admit(lane.conditioned)
            self._lanes[lane.row] = lane
            try:
                lane._open()
            except Exception as exc:
                self._end(lane, exc)
                raise

        self.call(admit)

    # -- the step thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.pipeline = self._make_pipeline()
            self._warm_up()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self.error = exc
            self._ready.set()
            self._done.set()
            return
        self._ready.set()
        first_ready: float | None = None
        try:
            while not self._closing:
                self._run_calls()
                waiting = self._poll_lanes()
                if not any(waiting.values()):
                    first_ready = None
                    self._idle()
                    continue
                now = time.monotonic()
                first_ready = now if first_ready is None else first_ready
                if not all(waiting.values()) and now - first_ready < self.gather_s:
                    self._idle()
                    continue
                first_ready = None
                self._frame(waiting)
        finally:
            for lane in list(self._lanes.values()):
                self._end(lane, None, input_ended=True)
            self._run_calls()  # those that came meanwhile fail cleanly (`_closing`)
            # MLX's streams of this thread, destroyed by the thread that made them: left to the process's
            # exit they abort it now and then ("terminate called without an active exception", ml-explore/mlx#3126).
            mx.clear_streams()
            self._done.set()

    def _idle(self) -> None:
        # With no conversation nothing is polled: a call, a join or `close` wakes the thread.
        self._wake.wait(self.poll_s if self._lanes else 1.0)
        self._wake.clear()

    def _run_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            call()

    def _poll_lanes(self) -> dict[int, int]:
        waiting = {}
        for row, lane in list(self._lanes.items()):
            if lane._stop.is_set():
                self._end(lane, None)
                continue
            try:
                ready = lane._poll()
            except Exception as exc:
                log.exception("the audio of row %d failed", row)
                self._end(lane, exc)
                continue
            if ready is None:
                self._end(lane, None, input_ended=True)
            else:
                waiting[row] = ready
        return waiting

    def _frame(self, waiting: dict[int, int]) -> None:
        taken = {row: self._lanes[row]._take(n) for row, n in waiting.items()}
        try:
            out, ms = self.pipeline.run_frame({row: user for row, (user, *_rest) in taken.items()})
        except Exception as exc:
            log.exception("a batched frame failed")
            for lane in list(self._lanes.values()):
                self._end(lane, PPChatError(f"the batched step failed: {type(exc).__name__}: {exc}"))
            return
        for row, (user, replaced, dropped, queued) in taken.items():
            lane = self._lanes[row]
            result = out[row]
            frame = FrameResult(pcm=result.pcm, text_token=result.text_token, text_piece=self._piece(result.text_token),
                                compute_ms=ms)
            if not lane._deliver(user, replaced, frame, ms, dropped, queued):
                self._end(lane, None)  # `_deliver` has published the error

    def _end(self, lane: BatchLane, error: BaseException | None, input_ended: bool = False) -> None:
        if self._lanes.get(lane.row) is lane:
            del self._lanes[lane.row]
            self.pipeline.leave(lane.row)
        lane._finish(error, input_ended)

    def _warm_up(self) -> None:
        """A few silent frames of a throw-away conversation, so that one-off costs (compilation,
        allocations) are paid before the first client."""
        if not self._warm_up_frames:
            return
        from ppchat.engine.prompts import PRESETS

        row = self.pipeline.join(None, PRESETS["casual"], seed=0)
        silence = np.zeros(self.pipeline.frame_size, dtype=np.float32)
        for _ in range(self._warm_up_frames):
            self.pipeline.run_frame({row: silence})
        self.pipeline.leave(row)

