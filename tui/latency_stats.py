"""Sliding-window latency statistics over step events (console, monitor, headless status)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from ppchat.constants import FRAME_MS
from ppchat.engine.events import PHASES, StepEvent

# What `ppchat talk --server` measures besides the server's step (see ppchat.net.remote).
NETWORK_KEYS = ("rtt", "jitter", "buffer")


@dataclass
class LatencyStats:
    """A sliding window of step timings plus counters that only grow."""

    window: int = 250  # 20 s of steps
    totals: collections.deque = field(default_factory=collections.deque)
    phases: dict[str, collections.deque] = field(default_factory=dict)
    steps: int = 0
    late: int = 0
    dropped_in: int = 0
    underruns: int = 0
    xruns: int = 0
    filled: int = 0
    queue_in: int = 0
    queue_out: int = 0
    network: dict[str, float] = field(default_factory=dict)  # latest rtt / jitter / buffer (ms) of a remote model

    def __post_init__(self) -> None:
        self.totals = collections.deque(maxlen=self.window)
        self.phases = {p: collections.deque(maxlen=self.window) for p in PHASES}

    def add(self, ev: StepEvent) -> None:
        ms = ev.timings_ms
        total = ms.get("total")
        if total is None:
            total = sum(ms.get(p, 0.0) for p in PHASES)
        # A frame the engine skipped to catch up (filled with silence) took no compute:
        # counted below, but a 0 ms "step" would pull the percentiles down.
        if total or ev.filled not in ("agent", "both"):
            self.totals.append(float(total))
            if any(p in ms for p in PHASES):  # a batched server step or NVIDIA's server time no phases
                for p in PHASES:
                    self.phases[p].append(float(ms.get(p, 0.0)))
        self.steps += 1
        self.late += bool(ev.late)
        self.dropped_in += ev.dropped_in
        self.underruns += ev.underruns
        self.xruns += ev.xruns
        self.filled += bool(ev.filled)
        self.queue_in, self.queue_out = ev.queue_in, ev.queue_out
        self.network.update((k, float(ms[k])) for k in NETWORK_KEYS if k in ms)

    def percentile(self, q: float) -> float | None:
        if not self.totals:
            return None
        return float(np.percentile(np.fromiter(self.totals, float, len(self.totals)), q))

    def max(self) -> float | None:
        return max(self.totals) if self.totals else None

    def real_time_factor(self, frame_ms: float = FRAME_MS) -> float | None:
        """Mean compute time per step over the audio time a step covers (< 1 keeps up)."""
        if not self.totals:
            return None
        return sum(self.totals) / len(self.totals) / frame_ms

    @property
    def has_phases(self) -> bool:
        """Whether any step in the window said how its time split into phases."""
        return any(self.phases[p] for p in PHASES)

    def phase_means(self) -> dict[str, float]:
        return {p: (sum(v) / len(v) if v else 0.0) for p, v in self.phases.items()}
