"""What a console screen is doing, as the status bar shows it."""

from __future__ import annotations

from enum import Enum


class UiState(str, Enum):
    """A console's state. A `str` enum, so a state compares equal to its name."""

    LIVE = "live"
    STARTING = "starting"  # prefill running, no step of the new run seen yet
    STOPPING = "stopping"  # finalising the recording
    STOPPED = "stopped"
    REPLAY = "replay"
    PAUSED = "paused"
    ENDED = "ended"  # a replay that reached the end of the recording
    MONITOR = "monitor"
    DISCONNECTED = "disconnected"

    def __str__(self) -> str:
        return self.value
