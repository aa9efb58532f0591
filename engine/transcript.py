"""The agent's text stream as people read it: clock stamps for the console, replay and export."""

from __future__ import annotations


def format_clock(seconds: float) -> str:
    """`mm:ss.t`, or `h:mm:ss.t` from one hour on."""
    tenths = round(seconds * 10)
    hours, rest = divmod(tenths, 36000)
    minutes, rest = divmod(rest, 600)
    secs, tenth = divmod(rest, 10)
    clock = f"{minutes:02d}:{secs:02d}.{tenth}"
    return f"{hours}:{clock}" if hours else clock
