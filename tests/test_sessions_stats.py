"""Session statistics: bounded memory, percentiles against numpy's."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ppchat.engine.events import StepEvent
from ppchat.sessions.stats import LatencyHistogram, StepStatsBuilder


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 5000])
def test_percentiles_match_numpy_within_the_bin_resolution(n):
    rng = np.random.default_rng(n)
    values = rng.lognormal(mean=3.7, sigma=0.4, size=n)  # ~40 ms with a long tail
    hist = LatencyHistogram()
    for v in values:
        hist.add(float(v))
    summary = hist.summary()
    tolerance = LatencyHistogram.RELATIVE_ERROR + 1e-6
    for q in (50, 95, 99):
        assert summary[f"p{q}"] == pytest.approx(np.percentile(values, q), rel=tolerance, abs=1e-3)
    assert summary["max"] == pytest.approx(values.max(), abs=1e-3)
    assert summary["mean"] == pytest.approx(values.mean(), abs=1e-3)


def test_out_of_range_and_non_finite_values():
    hist = LatencyHistogram()
    for v in (0.0, 1e-9, 5e7, float("nan"), float("inf")):
        hist.add(v)
    assert hist.count == 3 and hist.max == 5e7 and hist.min == 0.0
    assert hist.percentile(0) == 0.0 and hist.percentile(100) == 5e7
    assert LatencyHistogram().summary() == {}


def test_builder_memory_does_not_grow_with_the_session():
    """A 12-hour session must not keep one number per step (issue 16.14)."""
    builder = StepStatsBuilder()
    events = [StepEvent(step=i, audio_time=0.0, wall_time=0.0, timings_ms={"total": 30.0 + (i % 97)}) for i in range(2000)]
    for event in events:  # first use allocates whatever the builder keeps
        builder.add(event)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(50):  # 100 000 more steps
        for event in events:
            builder.add(event)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 16_384, f"the statistics grew by {grown} bytes over 100 000 steps"
    result = builder.result()
    assert result.steps == 102_000 and result.total_ms["max"] == 126.0
