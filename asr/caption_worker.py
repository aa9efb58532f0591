"""The caption process: `python -m ppchat.asr.caption_worker MODEL_DIR [--language L]`.

It runs at a lower priority than the conversation, reads the user's track as it is
recorded (see `caption_protocol`), splits it into utterances exactly as `ppchat
transcribe` does, and writes captions. A reader thread keeps draining stdin into a
bounded backlog, so ppchat's writes never wait for a transcription; when the backlog
overflows, the oldest audio is lost, never the conversation's. End of input ends it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time

import numpy as np

from ppchat.asr.caption_protocol import FRAME_BYTES, HEADER, RESET
from ppchat.asr.segmenter import RATE, Segmenter
from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE

BACKLOG_FRAMES = 30 * SAMPLE_RATE // FRAME_SAMPLES  # 30 s
PARTIAL_EVERY_S = 1.5
PARTIAL_WINDOW_S = 6.0  # a partial caption reads only the utterance's latest seconds: its cost stays flat
PROGRESS_EVERY_S = 1.0
LOWER_PRIORITY = 10


_stdout_lock = threading.Lock()


def _emit(doc: dict) -> None:
    line = json.dumps(doc, ensure_ascii=False) + "\n"
    with _stdout_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class Inbox:
    """stdin → a bounded deque of (step, pcm or None); a reader thread fills it."""

    def __init__(self, stream, maxlen: int = BACKLOG_FRAMES):
        self._stream = stream
        self._queue: collections.deque = collections.deque(maxlen=maxlen)
        self._ready = threading.Condition()
        self.closed = False
        self.last_step = -1  # the newest step received
        threading.Thread(target=self._read, name="caption-inbox", daemon=True).start()

    def _read_exact(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self._stream.read(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _read(self) -> None:
        try:
            while True:
                header = self._read_exact(HEADER.size)
                if header is None:
                    break
                (step,) = HEADER.unpack(header)
                pcm = None
                if step != RESET:
                    raw = self._read_exact(FRAME_BYTES)
                    if raw is None:
                        break
                    pcm = np.frombuffer(raw, dtype="<f4").astype(np.float32)
                with self._ready:
                    self._queue.append((step, pcm))
                    self.last_step = step
                    self._ready.notify()
        finally:
            with self._ready:
                self.closed = True
                self._ready.notify()

    def take(self, timeout: float) -> list:
        with self._ready:
            if not self._queue and not self.closed:
                self._ready.wait(timeout)
            out = list(self._queue)
            self._queue.clear()
            return out


class Captioner:
    """Audio in by step; captions out. `transcribe(clip16k) -> str`."""

    def __init__(self, transcribe, emit=_emit):
        self._transcribe = transcribe
        self._emit = emit
        self.reset()

    def reset(self, first_step: int = 0) -> None:
        import soxr

        self._resampler = soxr.ResampleStream(SAMPLE_RATE, RATE, 1, dtype="float32", quality="HQ")
        self._segmenter = Segmenter()
        self._audio = np.zeros(0, dtype=np.float32)  # 16 kHz, from sample `_origin` of the conversation
        self._origin = 0
        self._t0 = first_step * FRAME_SAMPLES / SAMPLE_RATE  # session time of sample 0
        self._next_step = first_step
        self._partial_at = 0  # segmenter position of the last partial

    def add(self, step: int, pcm: np.ndarray) -> None:
        if step < self._next_step:
            return  # already heard (a duplicate); the feeder only sends steps in order
        if step - self._next_step > BACKLOG_FRAMES:
            self.reset(step)  # joined mid-conversation (a restart) or lost a long stretch: start here
        if step > self._next_step:  # frames lost on the way: silence keeps the timeline right
            pcm = np.concatenate([np.zeros((step - self._next_step) * FRAME_SAMPLES, np.float32), pcm])
        self._next_step = step + 1
        audio = self._resampler.resample_chunk(pcm)
        self._audio = np.concatenate([self._audio, audio])
        for span in self._segmenter.feed(audio):
            self._final(span.start, span.end)
        self._trim()

    @property
    def heard_step(self) -> int:
        return self._next_step - 1

    def maybe_partial(self) -> None:
        start = self._segmenter.open_start
        pos = self._segmenter.position
        if start is None or pos - max(self._partial_at, start) < PARTIAL_EVERY_S * RATE:
            return
        self._partial_at = pos
        start = max(start, pos - round(PARTIAL_WINDOW_S * RATE))
        text = self._transcribe(self._clip(start, pos))
        self._emit({"type": "partial", "start": self._time(start), "text": text})

    def _final(self, start: int, end: int) -> None:
        text = self._transcribe(self._clip(start, end))
        self._emit({"type": "final", "start": self._time(start), "end": self._time(end), "text": text})

    def _time(self, sample: int) -> float:
        return round(self._t0 + sample / RATE, 3)

    def _clip(self, start: int, end: int) -> np.ndarray:
        return self._audio[start - self._origin : end - self._origin]

    def _trim(self) -> None:
        # Keep only what an utterance still open (or about to open, with its padding) needs.
        keep_from = self._segmenter.open_start
        if keep_from is None:
            keep_from = max(0, self._segmenter.position - RATE)
        drop = keep_from - self._origin
        if drop > 0:
            self._audio = self._audio[drop:]
            self._origin = keep_from


def run(model_dir: str, language: str | None) -> int:
    try:
        os.nice(LOWER_PRIORITY)
    except OSError:
        pass  # not allowed here: run at the same priority
    try:
        from ppchat.asr.transcriber import Transcriber

        transcriber = Transcriber(model_dir, language=language)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported to the parent, not a traceback on a terminal
        _emit({"type": "error", "message": f"cannot load the ASR model {model_dir}: {type(exc).__name__}: {exc}"})
        return 3
    _emit({"type": "ready"})
    inbox = Inbox(sys.stdin.buffer)
    captioner = Captioner(transcriber.text)
    threading.Thread(target=_heartbeat, args=(inbox, captioner), name="caption-heartbeat", daemon=True).start()
    while True:
        batch = inbox.take(timeout=PROGRESS_EVERY_S)
        for step, pcm in batch:
            if step == RESET:
                captioner.reset()
            else:
                captioner.add(step, pcm)
        if batch:
            captioner.maybe_partial()
        if inbox.closed and not batch:
            return 0


def _heartbeat(inbox: Inbox, captioner: Captioner) -> None:
    """Once a second, from its own thread: alive, and how far behind the transcription is.

    A transcription can take long (a slow machine, a big model); ppchat tells "slow"
    (heartbeats, a growing lag) from "frozen" (no heartbeats) by this."""
    while True:
        time.sleep(PROGRESS_EVERY_S)
        _emit({"type": "progress", "step": captioner.heard_step, "received": inbox.last_step})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ppchat.asr.caption_worker", description=__doc__)
    p.add_argument("model_dir")
    p.add_argument("--language", default=None)
    args = p.parse_args(argv)
    try:
        return run(args.model_dir, args.language)
    except BrokenPipeError:
        return 0  # ppchat went away


if __name__ == "__main__":
    sys.exit(main())
