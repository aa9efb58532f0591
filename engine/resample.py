"""Sample-rate conversion between audio devices / files and the model's rate (24 kHz).

`StreamResampler` converts a continuous signal chunk by chunk (soxr keeps the filter
state between chunks). It allocates its output, so it belongs on the step thread and
never in an audio callback. `resample` converts a whole array at once, for files.
"""

from __future__ import annotations

import numpy as np
import soxr


class StreamResampler:
    """Chunked mono float32 resampling that keeps filter state across calls.

    With equal rates it passes chunks through (as float32 copies), so callers need no
    special case. Output lengths vary from call to call by a sample or so, and the
    first outputs are short by soxr's filter delay; over a stream they add up to the
    converted length, and `process(..., last=True)` flushes what is left.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        self.rate_in = int(rate_in)
        self.rate_out = int(rate_out)
        self._stream = None if self.rate_in == self.rate_out else soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32")

    def process(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next 1-D chunk of the stream; `last=True` once, at the very end."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._stream is None:
            return chunk.copy()
        return self._stream.resample_chunk(chunk, last=last)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a whole signal (1-D mono, or 2-D [samples, channels]) to `sr_out`, float32."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x.copy()
    return soxr.resample(x, sr_in, sr_out).astype(np.float32, copy=False)
