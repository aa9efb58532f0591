"""The pipe between ppchat and its caption process.

ppchat → worker (stdin), binary: one message per 80 ms step, an 8-byte little-endian
signed step number followed by 1920 float32 samples (24 kHz); step -1 with no samples
means "a new conversation starts: forget the old one".

worker → ppchat (stdout), JSON Lines:
    {"type": "ready"}                                   the model is loaded
    {"type": "progress", "step": n, "received": m}      once a second: steps up to n are transcribed,
                                                        up to m received (n < m: the recogniser lags)
    {"type": "partial", "start": s, "text": ...}        the utterance being spoken, so far
    {"type": "final", "start": s, "end": s, "text": ...}
    {"type": "error", "message": ...}                   before exiting with status 3
"""

from __future__ import annotations

import struct

from ppchat.constants import FRAME_SAMPLES

HEADER = struct.Struct("<q")
FRAME_BYTES = FRAME_SAMPLES * 4
RESET = -1


def frame_message(step: int, pcm) -> bytes:
    import numpy as np

    return HEADER.pack(step) + np.ascontiguousarray(pcm, dtype="<f4").tobytes()


def reset_message() -> bytes:
    return HEADER.pack(RESET)
