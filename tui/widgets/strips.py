"""Building Line-API strips directly from (text, style) runs.

The live widgets redraw 12 times a second; going through Rich Text -> Textual Content
for hundreds of one-cell spans costs far more than the drawing itself, so they hand
Textual ready-made strips instead, with adjacent cells of one style merged.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

NULL_STYLE = Style()  # Textual's line filters (NO_COLOR) need a style on every segment


def runs_to_strip(runs: Iterable[tuple[str, Style | None]], width: int) -> Strip:
    """One line from (text, style) runs, merged where styles repeat, cropped/padded to `width`."""
    segments: list[Segment] = []
    text_parts: list[str] = []
    current: Style | None = NULL_STYLE
    for text, style in runs:
        if not text:
            continue
        if (style or NULL_STYLE) is not current and text_parts:
            segments.append(Segment("".join(text_parts), current))
            text_parts = []
        current = style or NULL_STYLE
        text_parts.append(text)
    if text_parts:
        segments.append(Segment("".join(text_parts), current))
    return Strip(segments).crop_extend(0, width, NULL_STYLE)

