"""The query string of `GET /api/chat`: what a client asks for, checked before anything runs.

Names are the reference's and its web UI's. The reference ignores the sampling parameters;
ppchat honours them. Parameters a client leaves out get the server's defaults (Kyutai's
client sends none at all). Parameters ppchat has no use for are accepted and ignored, so
the web UI works unchanged (see IGNORED).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from ppchat.engine.prompts import MAX_PROMPT_CHARS
from ppchat.net.protocol import ProtocolError

MAX_VOICE_NAME = 128
MAX_TEMPERATURE = 5.0
MAX_TOPK = 100_000

# Asks a ppchat server for its 0x04 metadata (the server's info, then every step's record). Off by
# default: NVIDIA's web UI parses each 0x04 as its own server-info schema and logs an error when it
# does not match, and Kyutai's client logs a warning per unknown kind, 12.5 times a second.
METADATA = "ppchat_metadata"

# Sent by NVIDIA's web UI; meaningless here (ppchat has one seed, no repetition penalty, no
# worker pool). `token` is read by the server itself.
IGNORED = ("pad_mult", "text_seed", "audio_seed", "repetition_penalty", "repetition_penalty_context",
           "worker_auth_id", "email", "token")


@dataclass(frozen=True)
class ChatParams:
    """What one connection asked for; None = the server's default."""

    voice_prompt: str | None = None
    text_prompt: str | None = None
    seed: int | None = None
    text_temperature: float | None = None
    text_topk: int | None = None
    audio_temperature: float | None = None
    audio_topk: int | None = None
    metadata: bool = False  # METADATA: send the info and per-step 0x04 messages

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ChatParams:
        """Parse and check; ProtocolError names the parameter and the accepted values."""
        voice = query.get("voice_prompt") or None
        if voice is not None:
            _check_voice_name(voice)
        prompt = query.get("text_prompt")
        if prompt is not None:
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ProtocolError(f"text_prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
            prompt = prompt.strip() or None
        seed = _int(query, "seed", -1, 2**63 - 1)
        return cls(
            voice_prompt=voice,
            text_prompt=prompt,
            seed=None if seed is None or seed == -1 else seed,
            text_temperature=_float(query, "text_temperature"),
            text_topk=_int(query, "text_topk", 1, MAX_TOPK),
            audio_temperature=_float(query, "audio_temperature"),
            audio_topk=_int(query, "audio_topk", 1, MAX_TOPK),
            metadata=query.get(METADATA, "") in ("1", "true"),
        )

    def to_query(self) -> str:
        """The query string a client sends for these parameters (defaults left out)."""
        pairs = [(name, value) for name, value in vars(self).items() if value is not None and name != "metadata"]
        if self.metadata:
            pairs.append((METADATA, "1"))
        return urlencode(pairs)


def _check_voice_name(name: str) -> None:
    # The name is looked up inside the voices folder and nowhere else: no paths at all.
    if len(name) > MAX_VOICE_NAME or any(c in name for c in "/\\\0") or name.startswith(".") or not name.isprintable():
        raise ProtocolError(
            f"voice_prompt {name[:MAX_VOICE_NAME]!r} is not a voice name; send a file name from the server's "
            "voices folder such as NATF2.pt (no folders)"
        )


def _float(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TEMPERATURE):
        raise ProtocolError(f"{name}={raw[:32]!r} must be a number from 0 (greedy) to {MAX_TEMPERATURE:g}")
    return value


def _int(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ProtocolError(f"{name}={raw[:32]!r} must be an integer from {low} to {high}")
    return value
