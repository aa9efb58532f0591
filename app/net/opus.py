"""Ogg/Opus streams of 24 kHz mono audio, as the PersonaPlex protocol carries them.

sphn (libopus) does the coding; this module decides the page layout. sphn 0.2 writes one
40 ms packet per page; the reference server (sphn 0.1) sent one 80 ms packet per page, so
the encoder regroups sphn's 20 ms Opus frames into packets of `packet_ms` and pages of
`packets_per_page` (RFC 6716 §3.2 frame packing; the coded frames are not touched).
The decoder accepts any page layout and any chunking of the byte stream.
"""

from __future__ import annotations

import random

import numpy as np

from ppchat.constants import SAMPLE_RATE
from ppchat.net import ogg

GRANULE_RATE = 48000  # Ogg Opus granule positions always count 48 kHz samples


class OpusStreamError(ValueError):
    """The bytes are not a mono Ogg/Opus stream that can be decoded."""


def _sphn():
    import sphn

    return sphn


# ---------------------------------------------------------------------------- Opus packets


def frame_samples_48k(toc: int) -> int:
    """Samples at 48 kHz of one frame with this TOC byte (RFC 6716 table 2)."""
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        ms10 = (1, 2, 4, 6)[config % 4]
        return 480 * ms10
    if config < 16:  # hybrid: 10, 20 ms
        return 480 * (1 + config % 2)
    return (120, 240, 480, 960)[config % 4]  # CELT: 2.5, 5, 10, 20 ms


def _read_length(packet: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(packet):
        raise OpusStreamError("truncated Opus packet")
    first = packet[pos]
    if first < 252:
        return first, pos + 1
    if pos + 1 >= len(packet):
        raise OpusStreamError("truncated Opus packet")
    return first + 4 * packet[pos + 1], pos + 2


def split_frames(packet: bytes) -> tuple[int, list[bytes]]:
    """(TOC byte, coded frames) of an Opus packet (RFC 6716 §3.2)."""
    if not packet:
        raise OpusStreamError("empty Opus packet")
    toc, code = packet[0], packet[0] & 3
    body = packet[1:]
    if code == 0:
        return toc, [body]
    if code == 1:
        if len(body) % 2:
            raise OpusStreamError("Opus code-1 packet with an odd payload")
        half = len(body) // 2
        return toc, [body[:half], body[half:]]
    if code == 2:
        size, pos = _read_length(packet, 1)
        if pos + size > len(packet):
            raise OpusStreamError("Opus code-2 packet shorter than its first frame")
        return toc, [packet[pos:pos + size], packet[pos + size:]]
    if len(packet) < 2:
        raise OpusStreamError("truncated Opus code-3 packet")
    vbr, padded, count = packet[1] & 0x80, packet[1] & 0x40, packet[1] & 0x3F
    if count == 0:
        raise OpusStreamError("Opus code-3 packet with no frames")
    pos, padding = 2, 0
    while padded:
        if pos >= len(packet):
            raise OpusStreamError("truncated Opus padding")
        step = packet[pos]
        pos += 1
        padding += 254 if step == 255 else step
        padded = step == 255
    end = len(packet) - padding
    if vbr:
        sizes = []
        for _ in range(count - 1):
            size, pos = _read_length(packet, pos)
            sizes.append(size)
        sizes.append(end - pos - sum(sizes))
    else:
        if (end - pos) % count:
            raise OpusStreamError("Opus CBR packet whose payload does not split evenly")
        sizes = [(end - pos) // count] * count
    if min(sizes) < 0:
        raise OpusStreamError("Opus code-3 frame lengths exceed the packet")
    frames = []
    for size in sizes:
        frames.append(packet[pos:pos + size])
        pos += size
    return toc, frames


def _length_bytes(size: int) -> bytes:
    if size < 252:
        return bytes([size])
    first = 252 + ((size - 252) & 3)
    return bytes([first, (size - first) >> 2])


def join_frames(toc: int, frames: list[bytes]) -> bytes:
    """One Opus packet holding `frames`, all coded with the configuration of `toc`."""
    if len(frames) == 1:
        return bytes([toc & 0xFC]) + frames[0]
    sizes = {len(f) for f in frames}
    head = bytes([(toc & 0xFC) | 3])
    if len(sizes) == 1:
        return head + bytes([len(frames)]) + b"".join(frames)
    lengths = b"".join(_length_bytes(len(f)) for f in frames[:-1])
    return head + bytes([0x80 | len(frames)]) + lengths + b"".join(frames)


# ---------------------------------------------------------------------------- streams


class OggOpusEncoder:
    """24 kHz mono float PCM in, Ogg pages out.

    `packet_ms`: audio per Opus packet (80 = the reference server's, 20 = the web UI's);
    `packets_per_page`: packets per Ogg page (1 = the reference's, 2 = the web UI's). A packet
    ends early where libopus changed its coding mode, since one packet has one configuration.
    The first `encode` returns the OpusHead and OpusTags pages first.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, packet_ms: int = 80, packets_per_page: int = 1) -> None:
        if not 0 < packet_ms <= 120:
            raise ValueError(f"packet_ms must be in 1..120 (Opus' limit), got {packet_ms}")
        self._writer = _sphn().OpusStreamWriter(sample_rate)
        self._packet_samples = packet_ms * GRANULE_RATE // 1000
        self._packets_per_page = max(1, packets_per_page)
        self._pages = ogg.PageWriter(random.getrandbits(32))
        self._pending = b""
        self._headers_left = 2
        self._frames: list[tuple[int, bytes]] = []  # (toc, coded frame) not yet in a packet
        self._packets: list[bytes] = []  # packets not yet on a page
        self._granule = 0

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Encode `pcm` (float32, any length); return the Ogg pages completed by it."""
        data = self._pending + self._writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32))
        pages, self._pending = ogg.parse_pages(data)
        out: list[bytes] = []
        for packet in ogg.packets_of(pages):
            if self._headers_left:
                out.append(self._pages.page([packet], 0, first=self._headers_left == 2))
                self._headers_left -= 1
                continue
            toc, frames = split_frames(packet)
            self._frames.extend((toc, f) for f in frames)
        self._pack(out)
        return out

    def _pack(self, out: list[bytes]) -> None:
        while self._frames:
            toc = self._frames[0][0]
            per = frame_samples_48k(toc)
            want = max(1, self._packet_samples // per)
            same = 0
            while same < len(self._frames) and same < want and self._frames[same][0] >> 2 == toc >> 2:
                same += 1
            if same < want and same == len(self._frames):
                break  # wait for the rest of this packet
            self._packets.append(join_frames(toc, [f for _, f in self._frames[:same]]))
            self._frames = self._frames[same:]
            self._granule += per * same
            if len(self._packets) >= self._packets_per_page:
                out.append(self._pages.page(self._packets, self._granule))
                self._packets = []


class OggOpusDecoder:
    """Ogg/Opus bytes in (any chunking, any page layout), 24 kHz mono float32 PCM out."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self._reader = _sphn().OpusStreamReader(sample_rate)

    def decode(self, data: bytes) -> np.ndarray:
        """The samples that `data` completes; raises OpusStreamError for anything not Ogg/Opus."""
        try:
            pcm = self._reader.append_bytes(bytes(data))
        except Exception as exc:  # noqa: BLE001 - converted to a user error; sphn reports malformed streams as ValueError / RuntimeError
            raise OpusStreamError(f"not a valid Ogg/Opus stream: {exc}") from None
        except BaseException as exc:  # pyo3 turns a Rust panic into PanicException(BaseException)
            if type(exc).__name__ != "PanicException":
                raise
            raise OpusStreamError(f"not a valid Ogg/Opus stream: {exc}") from None
        return np.asarray(pcm, dtype=np.float32).reshape(-1)
