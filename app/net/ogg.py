"""Ogg pages (RFC 3533): split a byte stream into pages and packets, and write pages.

sphn reads and writes whole Ogg/Opus streams but decides the page layout itself. The
server needs its own layout (one 80 ms packet per page, as the reference sends) and the
tests need the web UI's (two 20 ms packets per page), so pages are made here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CAPTURE = b"OggS"
HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04
MAX_SEGMENTS = 255


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def crc32(data: bytes) -> int:
    """Ogg's CRC: polynomial 0x04C11DB7, initial value 0, not reflected."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ byte]
    return crc


@dataclass
class Page:
    flags: int
    granule: int
    serial: int
    sequence: int
    packets: list[bytes]  # complete packets; the last one may continue on the next page
    last_open: bool  # the last packet continues on the next page
    raw: bytes


def parse_pages(data: bytes) -> tuple[list[Page], bytes]:
    """Complete pages at the start of `data`, and the bytes left over (an incomplete page).

    Raises ValueError when `data` does not start with a page or a page's checksum is wrong."""
    pages: list[Page] = []
    pos = 0
    while len(data) - pos >= HEADER.size:
        capture, _version, flags, granule, serial, seq, crc, nseg = HEADER.unpack_from(data, pos)
        if capture != CAPTURE:
            raise ValueError(f"not an Ogg page at byte {pos} (starts with {data[pos:pos + 4]!r})")
        lacing = data[pos + HEADER.size: pos + HEADER.size + nseg]
        if len(lacing) < nseg:
            break
        end = pos + HEADER.size + nseg + sum(lacing)
        if end > len(data):
            break
        raw = data[pos:end]
        check = bytearray(raw)
        check[22:26] = b"\0\0\0\0"
        if crc32(bytes(check)) != crc:
            raise ValueError(f"Ogg page {seq} has a wrong checksum")
        packets, body, cur = [], raw[HEADER.size + nseg:], 0
        start = 0
        for lace in lacing:
            cur += lace
            if lace < 255:
                packets.append(body[start:cur])
                start = cur
        last_open = bool(lacing) and lacing[-1] == 255
        if last_open:
            packets.append(body[start:cur])
        pages.append(Page(flags, granule, serial, seq, packets, last_open, raw))
        pos = end
    return pages, data[pos:]


def packets_of(pages: list[Page]) -> list[bytes]:
    """Reassemble packets across page boundaries (a page flagged 'continued' extends the last one)."""
    out: list[bytes] = []
    open_packet = False
    for page in pages:
        packets = list(page.packets)
        if page.flags & FLAG_CONTINUED and open_packet and packets:
            out[-1] += packets.pop(0)
        out.extend(packets)
        open_packet = page.last_open
    return out


class PageWriter:
    """Writes one logical Ogg stream page by page, each page holding whole packets."""

    def __init__(self, serial: int) -> None:
        self.serial = serial & 0xFFFFFFFF
        self.sequence = 0

    def page(self, packets: list[bytes], granule: int, *, first: bool = False, last: bool = False) -> bytes:
        lacing = bytearray()
        for packet in packets:
            lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
        if len(lacing) > MAX_SEGMENTS:
            raise ValueError(f"{sum(map(len, packets))} bytes of packets do not fit one Ogg page")
        flags = (FLAG_BOS if first else 0) | (FLAG_EOS if last else 0)
        header = HEADER.pack(CAPTURE, 0, flags, granule, self.serial, self.sequence, 0, len(lacing))
        raw = bytearray(header + bytes(lacing) + b"".join(packets))
        raw[22:26] = struct.pack("<I", crc32(bytes(raw)))
        self.sequence += 1
        return bytes(raw)
