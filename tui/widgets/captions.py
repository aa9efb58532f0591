"""The user's words under the monologue: live captions (`--captions`), or a transcribed session in replay.

Two lines, newest at the bottom, in the microphone's colour so they read as the other
speaker; a line too long for the width shows its end (the words just spoken). A partial
caption (still being spoken) is shown in italics and replaced by its final text. The
widget stays hidden until it has something to show, so the console without captions
looks as before.
"""

from __future__ import annotations

from collections import deque

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from ppchat.engine.transcript import format_clock

LABEL = "you › "


class Captions(Static):
    DEFAULT_CSS = """
    Captions { height: 2; padding: 0 1; display: none; }
    """

    def __init__(self, *, lines: int = 2, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines = lines
        self._finals: deque[tuple[float, str]] = deque(maxlen=lines)
        self._partial: tuple[float, str] | None = None
        self._stamp = Style(dim=True)
        self._final_style = Style(color="green")
        self._partial_style = Style(color="green", italic=True, dim=True)

    def final(self, start: float, text: str) -> None:
        if self._partial is not None and self._partial[0] <= start:
            self._partial = None
        if text:
            self._finals.append((start, text))
        self._show()

    def partial(self, start: float, text: str) -> None:
        self._partial = (start, text) if text else None
        self._show()

    def clear(self) -> None:
        self._finals.clear()
        self._partial = None
        self._show()

    def plain_lines(self) -> list[str]:
        return [line.plain for line in self._rendered()]

    def on_resize(self) -> None:
        self._show()

    def _rendered(self) -> list[Text]:
        rows = [(start, text, self._final_style) for start, text in self._finals]
        if self._partial is not None:
            rows.append((*self._partial, self._partial_style))
        width = self.content_region.width or 80
        out = []
        for start, text, style in rows[-self.lines :]:
            stamp = f"{format_clock(start, tenths=False)} "
            room = max(1, width - len(stamp) - len(LABEL))
            if len(text) > room:
                text = "…" + text[len(text) - room + 1 :]
            line = Text(stamp, self._stamp)
            line.append(LABEL + text, style)
            out.append(line)
        return out

    def _show(self) -> None:
        rendered = self._rendered()
        self.display = bool(rendered)
        self.update(Text("\n").join(rendered))
