"""Messages of the PersonaPlex websocket protocol: one kind byte, then the payload.

The kinds and payloads are those of NVIDIA's server and web UI (and Kyutai's moshi); see
README "Serving over the network". ppchat adds nothing new on the wire: per-step timings
travel in the existing metadata kind (0x04), which other clients ignore.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

# Where the server answers: the websocket (the reference's path) and ppchat's health check.
CHAT_PATH = "/api/chat"
HEALTH_PATH = "/health"


class Kind(enum.IntEnum):
    HANDSHAKE = 0x00
    AUDIO = 0x01
    TEXT = 0x02
    CONTROL = 0x03
    METADATA = 0x04
    ERROR = 0x05
    PING = 0x06


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text is sent back as an 0x05 error."""


@dataclass(frozen=True)
class Message:
    kind: Kind
    payload: bytes = b""

    def text(self) -> str:
        """The payload of a TEXT or ERROR message; undecodable bytes are replaced, not fatal."""
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.payload)
        except ValueError as exc:
            raise ProtocolError(f"metadata message is not JSON: {exc}") from None


def decode(data: bytes) -> Message:
    """Split a binary websocket message; ProtocolError for an empty one or an unknown kind."""
    if not data:
        raise ProtocolError("empty message (every message starts with a kind byte)")
    try:
        kind = Kind(data[0])
    except ValueError:
        raise ProtocolError(f"unknown message kind 0x{data[0]:02x} (known: 0x00-0x06)") from None
    return Message(kind, bytes(data[1:]))


def encode(kind: Kind, payload: bytes = b"") -> bytes:
    return bytes([kind]) + payload


def handshake() -> bytes:
    # The reference server sends the bare kind byte; its web UI and Kyutai's client accept that.
    return encode(Kind.HANDSHAKE)


def audio(ogg_bytes: bytes) -> bytes:
    return encode(Kind.AUDIO, ogg_bytes)


def text(piece: str) -> bytes:
    return encode(Kind.TEXT, piece.encode("utf-8"))


def error(message: str) -> bytes:
    return encode(Kind.ERROR, message.encode("utf-8"))


def metadata(obj: Any) -> bytes:
    return encode(Kind.METADATA, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
