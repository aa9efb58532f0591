"""A single-producer single-consumer float32 ring buffer for audio callbacks.

One thread writes (for capture: the PortAudio callback) and one thread reads (the step
thread), or the other way round for playback. Neither side ever allocates, blocks or
takes a lock, so the buffer is safe to use from a real-time audio callback.

Why this is thread-safe under CPython without a lock:

* Each position counter has exactly one writer: `_written` is only assigned by the
  producer, `_read` only by the consumer. The other side only reads it.
* The producer copies the samples into the storage *before* it publishes them by
  advancing `_written`; the consumer copies them out *before* it releases the space by
  advancing `_read`. So a side never sees the other's index cover samples that are not
  yet (or no longer) valid.
* Each counter is read once per call into a local and assigned once with a single
  attribute store; both are atomic under the GIL, which also orders the memory
  accesses around them.

The counters count samples since creation and never wrap (Python ints); the storage
position is the counter modulo the capacity.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Preallocated SPSC ring of float32 samples with overrun and underrun counters.

    Policy when full: the writer keeps what fits and drops the rest of the block (it
    cannot discard the oldest samples, which belong to the reader). Policy when short:
    the reader gets what there is and the rest of its block is zero-filled.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._storage = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0  # producer-owned
        self._read = 0  # consumer-owned
        self.overruns = 0  # producer-owned: writes that found too little room
        self.dropped_samples = 0  # producer-owned: samples those writes discarded
        self.underruns = 0  # consumer-owned: reads that found too few samples

    @property
    def written(self) -> int:
        """Samples written since creation (kept or not counted by `dropped_samples`)."""
        return self._written

    @property
    def available(self) -> int:
        """Samples written and not yet read."""
        return self._written - self._read

    @property
    def free(self) -> int:
        """Samples that can be written without dropping any."""
        return self.capacity - (self._written - self._read)

    def write(self, block: np.ndarray) -> int:
        """Copy a 1-D float32 block in (producer side). Returns the samples kept.

        A block that does not fit is truncated to the free space; the overrun is
        counted and the discarded samples added to `dropped_samples`.
        """
        written = self._written
        n = block.shape[0]
        room = self.capacity - (written - self._read)
        if n > room:
            self.overruns += 1
            self.dropped_samples += n - room
            n = room
            if n == 0:
                return 0
        start = written % self.capacity
        first = min(n, self.capacity - start)
        np.copyto(self._storage[start : start + first], block[:first])
        if n > first:
            np.copyto(self._storage[: n - first], block[first:n])
        self._written = written + n  # publish only after the copy
        return n

    def read(self, out: np.ndarray) -> int:
        """Fill the 1-D float32 array `out` (consumer side). Returns the real samples.

        When fewer than `len(out)` samples are available, the available ones are copied,
        the rest of `out` is zero-filled and an underrun is counted.
        """
        read = self._read
        want = out.shape[0]
        n = min(want, self._written - read)
        if n > 0:
            start = read % self.capacity
            first = min(n, self.capacity - start)
            np.copyto(out[:first], self._storage[start : start + first])
            if n > first:
                np.copyto(out[first:n], self._storage[: n - first])
            self._read = read + n  # release the space only after the copy
        if n < want:
            out[n:].fill(0.0)
            self.underruns += 1
        return n
