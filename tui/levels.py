"""Audio levels as people read them: dBFS on a meter with a floor, drawn in block characters.

Shared by the console's meters and the one-line status of the headless mode and the monitor.
"""

from __future__ import annotations

import math

FLOOR_DB = -60.0  # the bottom of the scale; quieter frames draw nothing
EIGHTHS = " ▁▂▃▄▅▆▇█"


def level_db(x: float) -> float:
    """Linear full-scale amplitude -> dBFS, floored at `FLOOR_DB`."""
    if x <= 0.0 or not math.isfinite(x):
        return FLOOR_DB
    return max(FLOOR_DB, min(0.0, 20.0 * math.log10(x)))


def level_fraction(x: float) -> float:
    """Where amplitude `x` sits on the meter, 0 (at or below the floor) to 1 (full scale)."""
    return (level_db(x) - FLOOR_DB) / -FLOOR_DB


def envelope_bar(env: list[float]) -> str:
    """A frame's peaks (e.g. the monitor's 10 ms envelope) as block characters on the meter's scale."""
    return "".join(EIGHTHS[max(1, round(level_fraction(v) * 8))] if v > 0 else EIGHTHS[0] for v in env)
