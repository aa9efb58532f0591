"""An audio endpoint backed by arrays instead of a sound card.

`ArrayAudio` plays a prepared signal as the "microphone" and collects what the runtime
sends to the "speaker". It drives the same `StreamBuffers` as `DuplexAudio`, so the
runtime cannot tell it from a device:

* `realtime=True`: a clock thread behaves like a PortAudio callback, delivering one
  block every `block_seconds` of wall time and pulling one block of playback (silence
  plus an underrun when the runtime was late). Use it to test real-time behaviour.
* `realtime=False`: the whole input is in the capture ring before the runtime starts
  and the runtime processes it as fast as it can, never dropping a frame; the playback
  ring keeps everything for `played()`. Use it for offline processing of a file.

`room` (real time only) simulates loudspeakers: what is played comes back into the
microphone through that impulse response, one block later (the block that was being
recorded while it played), added to the prepared signal; the far end is kept for echo
cancellation as on a sound card. The true loop delay is then one block plus the
response's own delay.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ppchat.engine.audio_io import DEFAULT_BLOCK_SECONDS, StreamBuffers
from ppchat.errors import AudioError


class ArrayAudio:
    """A mono float32 signal as microphone, a growing array as speaker."""

    def __init__(self, pcm: np.ndarray, sample_rate: int, *, realtime: bool = True, block_seconds: float = DEFAULT_BLOCK_SECONDS,
                 room: np.ndarray | None = None) -> None:
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise ValueError(f"ArrayAudio needs mono 1-D audio, got shape {pcm.shape}")
        self._input = pcm
        self.capture_rate = self.playback_rate = int(sample_rate)
        self.realtime = realtime
        self._block = max(1, round(self.capture_rate * block_seconds))
        if room is not None and not realtime:
            raise ValueError("a simulated room needs realtime=True")
        self._room = None if room is None else np.asarray(room, dtype=np.float32)
        if realtime:
            self.buffers = StreamBuffers(
                capture_capacity=10 * self.capture_rate, playback_capacity=2 * self.playback_rate, prebuffer=self._block,
                echo_capacity=10 * self.playback_rate if room is not None else 0,
            )
        else:
            # The playback side needs room for every frame of output: the input length, a
            # zero-padded last frame and the resampler's rounding fit in one extra second.
            self.buffers = StreamBuffers(
                capture_capacity=max(1, pcm.shape[0]), playback_capacity=pcm.shape[0] + self.playback_rate, prebuffer=0
            )
        self._delivered = 0
        self._played: list[np.ndarray] = []
        self._stop = threading.Event()
        self._clock: threading.Thread | None = None

    def start(self) -> None:
        if not self.realtime:
            self.buffers.push_input(self._input)
            self._delivered = self._input.shape[0]
            return
        self._clock = threading.Thread(target=self._tick, name="ppchat-array-audio", daemon=True)
        self._clock.start()

    def _tick(self) -> None:
        period = self._block / self.capture_rate
        out = np.zeros(self._block, dtype=np.float32)
        tail = 0 if self._room is None else self._room.shape[0] - 1
        played = np.zeros(tail + self._block, dtype=np.float32)  # the room's memory, then the last block
        deadline = time.monotonic() + period
        # Like a sound card: block k of input is delivered once it has been "recorded".
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            if self._delivered < self._input.shape[0]:
                end = self._delivered + self._block
                block = self._input[self._delivered : end]
                if self._room is not None:
                    block = block + np.convolve(played, self._room, mode="valid")[: block.shape[0]]
                self.buffers.push_input(block)
                self._delivered = min(end, self._input.shape[0])
            self.buffers.pull_output(out)
            if self._room is not None:
                played[:tail] = played[self._block:]
                played[tail:] = out
            self._played.append(out.copy())
            deadline += period

    def input_finished(self) -> bool:
        return self._delivered >= self._input.shape[0]

    def check(self) -> None:
        if self.buffers.error is not None:
            raise AudioError(f"the simulated audio callback failed: {self.buffers.error!r}")

    def close(self) -> None:
        self._stop.set()
        if self._clock is not None and self._clock is not threading.current_thread():
            self._clock.join()

    def played(self) -> np.ndarray:
        """Everything sent to the speaker so far (real time: including start-up silence)."""
        if self.realtime:
            return np.concatenate(self._played) if self._played else np.zeros(0, dtype=np.float32)
        out = np.zeros(self.buffers.playback.available, dtype=np.float32)
        self.buffers.playback.read(out)
        self._played.append(out)
        return np.concatenate(self._played)
