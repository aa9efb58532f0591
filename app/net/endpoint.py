"""A network connection as the step thread's audio endpoint.

The connection's reader pushes decoded microphone audio into the capture ring; the step
thread takes frames from it exactly as from a sound card, so the late-frame policy bounds
the delay when steps fall behind (the reference's grows without bound). The agent's frames
land in the playback ring, from which the connection's writer takes them to send.
"""

from __future__ import annotations

import numpy as np

from ppchat.engine.audio_io import StreamBuffers


class SocketAudio:
    """`AudioEndpoint` fed by a socket: `push` from the reader, `take_frames` from the writer."""

    realtime = True

    def __init__(self, sample_rate: int, frame_size: int, capture_seconds: float = 10.0) -> None:
        self.capture_rate = self.playback_rate = sample_rate
        self.frame_size = frame_size
        # Playback is emptied once per step, so a few frames of room is plenty.
        self.buffers = StreamBuffers(int(capture_seconds * sample_rate), 16 * frame_size, prebuffer=0)
        self._finished = False

    def start(self) -> None:
        pass

    def push(self, pcm: np.ndarray) -> None:
        self.buffers.push_input(pcm)

    def finish(self) -> None:
        """The client is gone: the step thread processes what is left, then ends."""
        self._finished = True

    def input_finished(self) -> bool:
        return self._finished

    def check(self) -> None:
        pass

    def close(self) -> None:
        self._finished = True

    def take_frames(self) -> list[np.ndarray]:
        """Every complete agent frame produced since the last call, oldest first."""
        ring = self.buffers.playback
        frames = []
        while ring.available >= self.frame_size:
            frame = np.empty(self.frame_size, dtype=np.float32)
            ring.read(frame)
            frames.append(frame)
        return frames
