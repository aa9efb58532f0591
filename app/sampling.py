"""How a conversation samples its tokens: one type from the command line to the sampler and into
session.json. The defaults are the reference's (spec §4.5), declared here and nowhere else.

The JSON form (session.json's `sampling`, `respond --text-json`, the server's info message)
spells the fields as the code does: `text_temp`, `text_top_k`, `audio_temp`, `audio_top_k`,
`seed` (null = not seeded). The command-line flags keep the reference's spelling (`--topk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """Temperature and top-k of one head; `temp <= 0` means greedy."""

    temp: float
    top_k: int

    @property
    def greedy(self) -> bool:
        return self.temp <= 0


TEXT_DEFAULTS = SamplingParams(temp=0.7, top_k=25)
AUDIO_DEFAULTS = SamplingParams(temp=0.8, top_k=250)


@dataclass(frozen=True)
class Sampling:
    """The text head's and the audio heads' parameters, and the seed (None: a fresh random run)."""

    text: SamplingParams = TEXT_DEFAULTS
    audio: SamplingParams = AUDIO_DEFAULTS
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text_temp": self.text.temp,
            "text_top_k": self.text.top_k,
            "audio_temp": self.audio.temp,
            "audio_top_k": self.audio.top_k,
            "seed": self.seed,
        }
