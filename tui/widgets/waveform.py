"""A scrolling level meter: one column per 80 ms frame, dB-scaled, drawn with block characters.

Each column's height is the frame's peak level on a dB scale; the part below the RMS
level is drawn solid and the part between RMS and peak in a lighter shade, so
speech (high RMS, dense columns) and silence (flat, grey) read differently even
without colour.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from ppchat.engine.levels import EIGHTHS, level_db, level_fraction
from ppchat.tui.widgets.strips import runs_to_strip

SPEECH_DB = -42.0  # frames whose RMS is above this are drawn as speech
CLIP_PEAK = 0.999
GUTTER = 7  # label column left of the chart


@dataclass(frozen=True)
class FrameLevel:
    rms: float
    peak: float
    filled: bool = False  # silence stood in for a missing frame
    marked: bool = False


def column_cells(level: FrameLevel, rows: int) -> list[tuple[str, str]]:
    """One column, top row first: (character, kind) per cell.

    kind is "body" (below RMS), "tip" (between RMS and peak), "clip", "base" (a silent
    frame's baseline, so a quiet stream still visibly scrolls), "gap" (a missing frame)
    or "" (empty).
    """
    total = rows * 8
    peak = round(level_fraction(level.peak) * total)
    rms = round(level_fraction(level.rms) * total)
    cells = []
    for row in range(rows):
        base = (rows - 1 - row) * 8
        fill = min(8, max(0, peak - base))
        if fill == 0:
            cells.append((" ", ""))
            continue
        if row == 0 and level.peak >= CLIP_PEAK:
            kind = "clip"
        else:
            kind = "body" if rms > base else "tip"
        cells.append((EIGHTHS[fill], kind))
    if cells[-1][1] == "":
        cells[-1] = ("·", "gap") if level.filled else ("▁", "base")
    return cells


class Waveform(Widget):
    """A live, right-to-left scrolling level history of one audio stream."""

    DEFAULT_CSS = """
    Waveform { height: 3; width: 1fr; text-wrap: nowrap; text-overflow: clip; }
    """

    def __init__(
        self,
        label: str,
        *,
        speech_color: str = "green",
        history: int = 1024,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.label = label
        self.badge = ""  # e.g. "MUTED", shown under the level readout
        self._levels: collections.deque[FrameLevel] = collections.deque(maxlen=history)
        self._styles = {
            ("body", True): Style(color=speech_color, bold=True),
            ("tip", True): Style(color=speech_color, dim=True),
            ("body", False): Style(color="grey50"),
            ("tip", False): Style(color="grey35"),
            ("clip", True): Style(color="red", bold=True),
            ("clip", False): Style(color="red", bold=True),
            ("gap", True): Style(color="red"),
            ("gap", False): Style(color="red"),
            ("base", False): Style(color="grey23"),
        }
        self._mark_style = Style(bgcolor="magenta")
        self._mark_styles: dict[Style | None, Style] = {}
        self._strips: list[Strip] | None = None
        self._strips_size = (0, 0)
        self._label_style = Style(bold=True)
        self._readout_style = Style(dim=True)
        self._badge_style = Style(color="yellow", bold=True, reverse=True)

    def push(self, level: FrameLevel) -> None:
        """Append one frame; call `refresh()` once after a batch."""
        self._levels.append(level)

    def clear(self) -> None:
        self._levels.clear()
        self.refresh()

    @property
    def levels(self) -> list[FrameLevel]:
        return list(self._levels)

    def refresh(self, *args, **kwargs):
        self._strips = None
        return super().refresh(*args, **kwargs)

    def render_line(self, y: int) -> Strip:
        rows, width = self.size.height, self.size.width
        if self._strips is None or self._strips_size != (rows, width):
            self._strips = self.render_strips(rows, width)
            self._strips_size = (rows, width)
        return self._strips[y] if 0 <= y < len(self._strips) else Strip.blank(width)

    def render_strips(self, rows: int, width: int) -> list[Strip]:
        """The chart as `rows` strips of `width` cells: label gutter, then newest frame at the right."""
        chart_width = max(0, width - GUTTER)
        visible = list(self._levels)[-chart_width:] if chart_width else []
        pad = " " * (chart_width - len(visible))
        columns = [column_cells(lvl, rows) for lvl in visible]
        speech = [level_db(lvl.rms) > SPEECH_DB for lvl in visible]
        last = visible[-1] if visible else None
        gutter = [
            (self.label, self._label_style),
            (f"{level_db(last.rms):4.0f}dB" if last else "", self._readout_style),
            (self.badge, self._badge_style),
        ]
        strips = []
        for row in range(rows):
            label, label_style = gutter[row] if row < len(gutter) else ("", None)
            label = label[: GUTTER - 1]
            runs: list[tuple[str, Style | None]] = [(label, label_style), (" " * (GUTTER - len(label)), None), (pad, None)]
            for col, cells in enumerate(columns):
                char, kind = cells[row]
                style = self._styles.get((kind, speech[col])) if kind else None
                if visible[col].marked:
                    style = self._mark_styles.setdefault(style, self._mark_style + style if style else self._mark_style)
                runs.append((char, style))
            strips.append(runs_to_strip(runs, width))
        return strips
