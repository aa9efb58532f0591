"""A scrolling waveform: the real samples' envelope, drawn symmetric about a centre line.

Each cell column is one 80 ms frame, split into two 40 ms slices drawn with braille
dots (2 dots wide, 4 high per cell). For each slice the highest and lowest sample
are drawn up and down from the centre on a perceptual (dB) amplitude scale: -60 dBFS
and below sit on the centre line, full scale reaches the top and bottom rows. So
silence is a thin line, speech has the shape of its syllables, and a loud clap fills
the height. A frame that touched full scale is drawn in the clip colour; a frame the
engine had to fill with silence is marked as a gap; marked frames (k) get a
background. The current level (dBFS of the newest frame's RMS) is shown as a number.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from ppchat.tui.levels import level_db, level_fraction
from ppchat.tui.widgets.strips import runs_to_strip

SPEECH_DB = -42.0  # frames whose RMS is above this are drawn as speech
CLIP_PEAK = 0.999
GUTTER = 7  # label column left of the chart
SLICES = 2  # sub-columns per frame (braille cells are two dots wide)
BRAILLE = 0x2800
# Dot bits of a braille cell by (sub-column, dot row from the top).
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@dataclass(frozen=True)
class FrameShape:
    """One frame as the waveform draws it: per slice the lowest and highest sample."""

    lows: tuple[float, ...]
    highs: tuple[float, ...]
    rms: float
    filled: bool = False  # silence stood in for a missing frame
    marked: bool = False

    @property
    def peak(self) -> float:
        return max(max(self.highs, default=0.0), -min(self.lows, default=0.0))

    @classmethod
    def from_pcm(cls, pcm: np.ndarray, *, rms: float, filled: bool = False, marked: bool = False) -> FrameShape:
        """The min and max of each of `SLICES` equal slices of the frame's samples."""
        parts = np.array_split(np.asarray(pcm, dtype=np.float32).reshape(-1), SLICES)
        lows = tuple(float(p.min()) if p.size else 0.0 for p in parts)
        highs = tuple(float(p.max()) if p.size else 0.0 for p in parts)
        return cls(lows, highs, rms, filled, marked)

    @classmethod
    def from_peaks(cls, peaks: list[float], *, rms: float, filled: bool = False, marked: bool = False) -> FrameShape:
        """From |sample| peaks over equal slices (the monitor's envelope): drawn as ±peak."""
        parts = np.array_split(np.asarray(peaks or [0.0], dtype=np.float32), SLICES)
        highs = tuple(float(p.max()) if p.size else 0.0 for p in parts)
        return cls(tuple(-h for h in highs), highs, rms, filled, marked)

    @classmethod
    def from_level(cls, peak: float, *, rms: float, filled: bool = False, marked: bool = False) -> FrameShape:
        """When only the frame's peak is known (old logs): a flat ±peak."""
        return cls((-peak,) * SLICES, (peak,) * SLICES, rms, filled, marked)


def dot_extent(amplitude: float, half_dots: int) -> int:
    """How many dots an amplitude reaches from the centre line, 0..half_dots, on the dB scale."""
    return math.ceil(level_fraction(abs(amplitude)) * half_dots - 1e-9)


def column_chars(shape: FrameShape, rows: int) -> list[str]:
    """The frame's braille characters, top row first.

    The centre line lies between dot rows `2 * rows - 1` and `2 * rows` (of `4 * rows`);
    the slice's maximum draws upwards from it, its minimum downwards. Every slice keeps
    at least the dot just above the centre, so silence is a continuous thin line.
    """
    half = 2 * rows
    bits = [0] * rows
    for sub in range(SLICES):
        up = max(1, dot_extent(max(0.0, shape.highs[sub]), half))
        down = dot_extent(min(0.0, shape.lows[sub]), half)
        for dot_row in range(half - up, half + down):
            bits[dot_row // 4] |= DOT_BITS[sub][dot_row % 4]
    return [chr(BRAILLE + b) if b else " " for b in bits]


class Waveform(Widget):
    """A live, right-to-left scrolling waveform of one audio stream."""

    DEFAULT_CSS = """
    Waveform { height: 3; width: 1fr; text-wrap: nowrap; text-overflow: clip; }
    Waveform > .waveform--label { text-style: bold; }
    Waveform > .waveform--readout { text-style: dim; }
    Waveform > .waveform--badge { color: $warning; text-style: bold reverse; }
    Waveform > .waveform--speech { color: ansi_green; text-style: bold; }
    Waveform > .waveform--quiet { color: $text-muted; }
    Waveform > .waveform--clip { color: $error; text-style: bold; }
    Waveform > .waveform--gap { color: $error; }
    Waveform > .waveform--mark { background: ansi_magenta; }
    """
    COMPONENT_CLASSES = {
        "waveform--label", "waveform--readout", "waveform--badge",
        "waveform--speech", "waveform--quiet", "waveform--clip", "waveform--gap", "waveform--mark",
    }

    def __init__(
        self,
        label: str,
        *,
        history: int = 1024,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.label = label
        self.badge = ""  # e.g. "MUTED", shown under the level readout
        self.note = ""  # e.g. "AEC 31", shown there when there is no badge
        self._frames: collections.deque[FrameShape] = collections.deque(maxlen=history)
        self._chars: dict[tuple[FrameShape, int], list[str]] = {}  # (frame, rows) -> its column
        self._strips: list[Strip] | None = None
        self._strips_size = (0, 0)

    def push(self, shape: FrameShape) -> None:
        """Append one frame; call `refresh()` once after a batch."""
        self._frames.append(shape)

    def clear(self) -> None:
        self._frames.clear()
        self._chars.clear()
        self.refresh()

    @property
    def frames(self) -> list[FrameShape]:
        return list(self._frames)

    def refresh(self, *args, **kwargs):
        self._strips = None
        return super().refresh(*args, **kwargs)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # the theme or a breakpoint changed the component styles

    def render_line(self, y: int) -> Strip:
        rows, width = self.size.height, self.size.width
        if self._strips is None or self._strips_size != (rows, width):
            self._strips = self.render_strips(rows, width)
            self._strips_size = (rows, width)
        return self._strips[y] if 0 <= y < len(self._strips) else Strip.blank(width)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"waveform--{name}", partial=True)

    def render_strips(self, rows: int, width: int) -> list[Strip]:
        """The chart as `rows` strips of `width` cells: label gutter, then newest frame at the right."""
        chart_width = max(0, width - GUTTER)
        visible = list(self._frames)[-chart_width:] if chart_width else []
        columns = [self._column(frame, rows) for frame in visible]
        styles = [self._frame_style(frame) for frame in visible]
        last = visible[-1] if visible else None
        gutter = [
            (self.label, self._style("label")),
            (f"{level_db(last.rms):4.0f}dB" if last else "", self._style("readout")),
            (self.badge, self._style("badge")) if self.badge else (self.note, self._style("readout")),
        ]
        pad = " " * (chart_width - len(visible))
        strips = []
        for row in range(rows):
            label, label_style = gutter[row] if row < len(gutter) else ("", None)
            label = label[: GUTTER - 1]
            runs: list[tuple[str, Style | None]] = [(label, label_style), (" " * (GUTTER - len(label)), None), (pad, None)]
            runs += [(column[row], style) for column, style in zip(columns, styles)]
            strips.append(runs_to_strip(runs, width))
        if len(self._chars) > 4 * (self._frames.maxlen or 1024):
            self._chars.clear()  # shapes that scrolled away; equal frames share one entry
        return strips

    def _column(self, frame: FrameShape, rows: int) -> list[str]:
        key = (frame, rows)
        chars = self._chars.get(key)
        if chars is None:
            if frame.filled:  # a gap mark on the centre line instead of made-up audio
                chars = [" "] * rows
                chars[(rows - 1) // 2] = "·"
            else:
                chars = column_chars(frame, rows)
            self._chars[key] = chars
        return chars

    def _frame_style(self, frame: FrameShape) -> Style:
        if frame.filled:
            style = self._style("gap")
        elif frame.peak >= CLIP_PEAK:
            style = self._style("clip")
        else:
            style = self._style("speech" if level_db(frame.rms) > SPEECH_DB else "quiet")
        return style + self._style("mark") if frame.marked else style
