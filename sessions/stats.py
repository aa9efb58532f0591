"""Summary statistics of a session's steps, built incrementally (recorder) or from a log (repair).

Step times go into a fixed-size histogram, not a list: a recorder's memory must not grow
with the length of the conversation (a 12-hour session is 540 000 steps). Its bins are
log-spaced, so every percentile is within `LatencyHistogram.RELATIVE_ERROR` of the exact
(linearly interpolated, as numpy's) one; the mean and the maximum are exact.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ppchat.engine.events import StepEvent
from ppchat.sessions.schema import StepStats

PERCENTILES = (50, 95, 99)


class LatencyHistogram:
    """Milliseconds in log-spaced bins from `LOW_MS` to `HIGH_MS`, plus exact count, sum, min and max."""

    LOW_MS = 0.01
    HIGH_MS = 1e6  # 1000 s; anything outside is clamped into the end bins (min/max stay exact)
    RATIO = 1.004  # bin width: a bin's geometric middle is within 0.2 % of any value in it
    RELATIVE_ERROR = math.sqrt(RATIO) - 1

    _LOG_LOW = math.log(LOW_MS)
    _LOG_RATIO = math.log(RATIO)
    BINS = math.ceil((math.log(HIGH_MS) - math.log(LOW_MS)) / math.log(RATIO))

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, ms: float) -> None:
        if not math.isfinite(ms):
            return
        self.count += 1
        self.total += ms
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)
        self.counts[self._bin(ms)] += 1

    def _bin(self, ms: float) -> int:
        if ms <= self.LOW_MS:
            return 0
        return min(int((math.log(ms) - self._LOG_LOW) / self._LOG_RATIO), self.BINS - 1)

    def _value_at_rank(self, rank: int, cumulative: np.ndarray) -> float:
        """The `rank`-th smallest value (0-based), to within the bin resolution."""
        if rank <= 0:
            return self.min
        if rank >= self.count - 1:
            return self.max
        b = int(np.searchsorted(cumulative, rank, side="right"))
        middle = math.exp(self._LOG_LOW + (b + 0.5) * self._LOG_RATIO)
        return min(max(middle, self.min), self.max)

    def percentile(self, q: float) -> float:
        """Like `np.percentile(values, q)` (linear interpolation between closest ranks)."""
        if not self.count:
            return math.nan
        cumulative = np.cumsum(self.counts)
        position = q / 100 * (self.count - 1)
        lo, frac = int(math.floor(position)), position - math.floor(position)
        low = self._value_at_rank(lo, cumulative)
        if frac == 0:
            return low
        return low + frac * (self._value_at_rank(lo + 1, cumulative) - low)

    def summary(self) -> dict[str, float]:
        """`mean`, `p50`, `p95`, `p99`, `max` rounded to µs; empty without values."""
        if not self.count:
            return {}
        values = {"mean": self.total / self.count}
        values.update({f"p{q}": self.percentile(q) for q in PERCENTILES})
        values["max"] = self.max
        return {k: round(float(v), 3) for k, v in values.items()}


class StepStatsBuilder:
    """Accumulates steps in constant memory; `result()` gives the `StepStats` stored in `session.json`."""

    def __init__(self) -> None:
        self._totals = LatencyHistogram()
        self._stats = StepStats()

    def add(self, event: StepEvent) -> None:
        s = self._stats
        s.steps += 1
        total = event.timings_ms.get("total")
        if total is not None:
            self._totals.add(total)
        s.late_frames += bool(event.late)
        s.dropped_frames += event.dropped_in
        s.underruns += event.underruns
        s.xruns += event.xruns
        s.filled_frames += bool(event.filled)

    def add_lost(self, count: int) -> None:
        self._stats.lost_steps += count

    def result(self) -> StepStats:
        return dataclasses.replace(self._stats, total_ms=self._totals.summary())


def stats_from_log(steps: list[StepEvent], lost_steps: int) -> StepStats:
    builder = StepStatsBuilder()
    for event in steps:
        builder.add(event)
    builder.add_lost(lost_steps)
    return builder.result()
