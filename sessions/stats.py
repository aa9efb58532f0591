"""Summary statistics of a session's steps, built incrementally (recorder) or from a log (repair)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ppchat.engine.events import StepEvent
from ppchat.sessions.schema import StepStats


class StepStatsBuilder:
    """Accumulates steps; `result()` gives the `StepStats` stored in `session.json`."""

    def __init__(self) -> None:
        self._totals: list[float] = []
        self._stats = StepStats()

    def add(self, event: StepEvent) -> None:
        s = self._stats
        s.steps += 1
        total = event.timings_ms.get("total")
        if total is not None:
            self._totals.append(total)
        s.late_frames += bool(event.late)
        s.dropped_frames += event.dropped_in
        s.underruns += event.underruns
        s.xruns += event.xruns
        s.filled_frames += bool(event.filled)

    def add_lost(self, count: int) -> None:
        self._stats.lost_steps += count

    def result(self) -> StepStats:
        totals = np.asarray(self._totals, dtype=np.float64)
        summary = {}
        if totals.size:
            p50, p95, p99 = np.percentile(totals, [50, 95, 99])
            summary = {"mean": totals.mean(), "p50": p50, "p95": p95, "p99": p99, "max": totals.max()}
        return dataclasses.replace(self._stats, total_ms={k: round(float(v), 3) for k, v in summary.items()})


def stats_from_log(steps: list[StepEvent], lost_steps: int) -> StepStats:
    builder = StepStatsBuilder()
    for event in steps:
        builder.add(event)
    builder.add_lost(lost_steps)
    return builder.result()
