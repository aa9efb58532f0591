"""Crash-safe streaming WAV files: 32-bit float, little-endian, 24 kHz.

Why float32 and not PCM16: the recording is the engine's exact input and output, so a
recorded mic track fed back through the engine gives the same tokens, and a round trip
compares values exactly. It costs 96 kB/s per mono track (346 MB per hour); PCM16
would halve that but round every sample.

File layout written by `WavWriter` (58-byte header, then the samples; `data` is the
last chunk, so its size always equals the file length minus 58):

    RIFF <file length - 8> WAVE
    fmt  <18> format=3 (IEEE float) channels rate byte_rate block_align bits=32 cbSize=0
    fact <4>  <sample frames>
    data <sample bytes> <samples...>

Crash safety: the header is written first with zero sizes. Each `flush` appends the
buffered samples, then patches the three sizes, then fsyncs, so a header never claims
data that was not written first, and old samples are never rewritten. After `kill -9`
the file is playable up to the last flush; samples appended after it are recovered by
`repair_wav`, which sets the sizes from the file length (cut to whole sample frames).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppchat.constants import SAMPLE_RATE
from ppchat.errors import SessionError
from ppchat.sessions.files import BufferedAppender, RecordingStopped, describe_write_error

FORMAT_IEEE_FLOAT = 3
_HEADER = struct.Struct("<4sI4s" "4sIHHIIHHH" "4sII" "4sI")
HEADER_BYTES = _HEADER.size  # 58
_RIFF_SIZE_AT, _FACT_AT, _DATA_SIZE_AT = 4, 46, 54
_MAX_DATA_BYTES = 0xFFFFFFFF - HEADER_BYTES  # RIFF sizes are 32-bit
MAX_FRAMES = _MAX_DATA_BYTES // 4  # mono float32 samples one file can hold


def _header(channels: int, sample_rate: int, data_bytes: int) -> bytes:
    block_align = 4 * channels
    return _HEADER.pack(
        b"RIFF", HEADER_BYTES - 8 + data_bytes, b"WAVE",
        b"fmt ", 18, FORMAT_IEEE_FLOAT, channels, sample_rate, sample_rate * block_align, block_align, 32, 0,
        b"fact", 4, data_bytes // block_align,
        b"data", data_bytes,
    )  # fmt: skip


class WavWriter(BufferedAppender):
    """Appends float32 samples to a new WAV file; `flush` makes them durable and playable.

    `append` only buffers (cheap, no I/O). Any write error raises `RecordingStopped`;
    the file then still holds every sample of the last successful flush.
    """

    def __init__(self, path: Path, channels: int = 1, sample_rate: int = SAMPLE_RATE):
        super().__init__(path)
        self.channels = channels
        try:
            self._file.write(_header(channels, sample_rate, 0))
            self._file.sync()
        except RecordingStopped:
            self._file.close()
            raise

    @property
    def frames_committed(self) -> int:
        """Sample frames that are durable on disk and covered by the header."""
        return (self._file.committed - HEADER_BYTES) // (4 * self.channels)

    def append(self, samples: np.ndarray) -> None:
        """Buffer samples: shape (n,) for mono, (n, channels) for interleaved multichannel."""
        data = np.ascontiguousarray(samples, dtype="<f4")
        expected = (self.channels,) if self.channels > 1 else ()
        if data.ndim != 1 + len(expected) or data.shape[1:] != expected:
            raise ValueError(f"expected {self.channels} channel(s), got samples of shape {data.shape}")
        self._pending.append(data.tobytes())

    def _write_durably(self, data: bytes) -> None:
        # Samples first, then the sizes that cover them, then one fsync for both.
        data_bytes = self._file.length - HEADER_BYTES + len(data)
        if data_bytes > _MAX_DATA_BYTES:
            raise RecordingStopped(f"cannot write {self.path}: a WAV file can't hold more than 4 GiB")
        self._file.write(data)
        self._patch_sizes(data_bytes)
        self._file.sync()

    def _patch_sizes(self, data_bytes: int) -> None:
        self._file.patch(_RIFF_SIZE_AT, struct.pack("<I", HEADER_BYTES - 8 + data_bytes))
        self._file.patch(_FACT_AT, struct.pack("<I", data_bytes // (4 * self.channels)))
        self._file.patch(_DATA_SIZE_AT, struct.pack("<I", data_bytes))

    def cut(self, length: int) -> None:
        """Shorten to `length` bytes (header included) and make the header say so."""
        super().cut(max(length, HEADER_BYTES))
        self._patch_sizes(self._file.length - HEADER_BYTES)
        self._file.sync()


@dataclass(frozen=True)
class WavLayout:
    """Where the samples of a WAV file are, per its header, and how long the file really is."""

    format_tag: int
    channels: int
    sample_rate: int
    bits: int
    block_align: int
    data_offset: int
    data_bytes: int  # as claimed by the header
    file_bytes: int
    riff_bytes: int
    fact_offset: int | None  # where the fact chunk's frame count is, if there is one

    @property
    def available_bytes(self) -> int:
        """Whole sample frames that really follow the data chunk header."""
        present = max(self.file_bytes - self.data_offset, 0)
        return present - present % self.block_align


def read_wav_layout(path: Path) -> WavLayout:
    """Parse the RIFF chunks up to `data`. Raises `SessionError` if it isn't a usable WAV."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            file_bytes = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise SessionError(f"{path} is not a WAV file (no RIFF/WAVE header)")
            riff_bytes = struct.unpack("<I", head[4:8])[0]
            fmt, fact_offset = None, None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    raise SessionError(f"{path} has no audio data chunk (the file is cut short or damaged)")
                cid, size = struct.unpack("<4sI", chunk)
                if cid == b"data":
                    data_offset, data_bytes = f.tell(), size
                    break
                body_at = f.tell()
                if cid == b"fmt ":
                    fmt = f.read(16)
                elif cid == b"fact":
                    fact_offset = body_at
                f.seek(body_at + size + (size & 1))
    except OSError as exc:
        raise SessionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if fmt is None or len(fmt) < 16:
        raise SessionError(f"{path} has no valid format chunk")
    format_tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt)
    if channels < 1 or block_align < 1:
        raise SessionError(f"{path} has an invalid format chunk ({channels} channels, block size {block_align})")
    return WavLayout(format_tag, channels, rate, bits, block_align, data_offset, data_bytes, file_bytes, riff_bytes, fact_offset)


def repair_wav(path: Path) -> bool:
    """Make the header sizes agree with the samples really present; True if anything changed.

    Meant for files written by `WavWriter` (data is the last chunk): a header left
    behind by a crash (sizes from an older flush, or the zero placeholders) is set to
    cover every whole sample frame in the file, and a torn last frame is cut off.
    """
    path = Path(path)
    layout = read_wav_layout(path)
    data_bytes = layout.available_bytes
    end = layout.data_offset + data_bytes
    consistent = (
        layout.data_bytes == data_bytes
        and layout.file_bytes == end
        and layout.riff_bytes == end - 8
    )
    if consistent:
        return False
    try:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.seek(4)
            f.write(struct.pack("<I", end - 8))
            if layout.fact_offset is not None:
                f.seek(layout.fact_offset)
                f.write(struct.pack("<I", data_bytes // layout.block_align))
            f.seek(layout.data_offset - 4)
            f.write(struct.pack("<I", data_bytes))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise SessionError(describe_write_error(exc, path)) from exc
    return True


def read_wav(path: Path) -> np.ndarray:
    """The samples of a float32 WAV as a read-only memory map: shape (n,) or (n, channels).

    Reads only whole frames that the header covers *and* that are present, so a file
    that is still being written (or was never repaired) loads up to its last flush.
    """
    layout = read_wav_layout(path)
    if layout.format_tag != FORMAT_IEEE_FLOAT or layout.bits != 32:
        raise SessionError(
            f"{path} is not a 32-bit float WAV (format {layout.format_tag}, {layout.bits} bits); "
            "ppchat sessions only contain float32 audio"
        )
    frames = min(layout.data_bytes, layout.available_bytes) // layout.block_align
    shape = (frames,) if layout.channels == 1 else (frames, layout.channels)
    if frames == 0:
        return np.zeros(shape, dtype=np.float32)
    try:
        return np.memmap(path, dtype="<f4", mode="r", offset=layout.data_offset, shape=shape)
    except (OSError, ValueError) as exc:
        raise SessionError(f"cannot read {path}: {exc}") from exc
