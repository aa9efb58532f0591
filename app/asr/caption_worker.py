"""The caption process: `python -m ppchat.asr.caption_worker MODEL_DIR [--language L]`.

It runs at a lower priority than the conversation, reads the user's track as it is
recorded (see `caption_protocol`), turns it into captions with the same
`UtteranceStream` as `ppchat transcribe`, and writes them. A reader thread keeps draining stdin into a
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
from ppchat.asr.utterances import UtteranceStream
from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE

BACKLOG_FRAMES = 30 * SAMPLE_RATE // FRAME_SAMPLES  # 30 s
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
    captioner = UtteranceStream(transcriber.text, _emit)
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


def _heartbeat(inbox: Inbox, captioner: UtteranceStream) -> None:
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
