"""The agent's inner monologue: text pieces streamed as they are sampled, split into turns.

A turn ends when the model has produced no text for `turn_gap_steps` frames (PAD/EPAD
runs); the next piece then starts a new, time-stamped line instead of growing one
endless line. Marks (k) appear as their own lines.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ppchat.engine.events import StepEvent
from ppchat.engine.transcript import Entry, Transcript, format_clock
from ppchat.tui.widgets.strips import runs_to_strip

CURSOR = "▌"
NEWER_HINT = " new text ↓ End "


class Monologue(ScrollView, can_focus=True):
    """Scrollable transcript that follows the newest text unless scrolled back.

    A Line-API widget: each entry is wrapped once per (text, width) and cached, so a new
    piece rewraps only the open turn, and growing text never triggers a screen relayout.

    Following is explicit state, not "was the view at the bottom before this batch":
    the view only leaves the end when the user moves it (keys, wheel, scrollbar), and it
    follows again once the user is back at the end (End). While the user reads older
    text the bottom row says that newer text is below.
    """

    DEFAULT_CSS = """
    Monologue {
        height: 1fr; width: 2fr; padding: 0 0 0 1;
        /* Lines are wrapped to the width: never a horizontal scrollbar, and a fixed
           one-cell gutter so the wrap width does not change when the text overflows. */
        overflow-x: hidden; overflow-y: auto; scrollbar-gutter: stable; scrollbar-size-vertical: 1;
    }
    Monologue > .monologue--stamp { text-style: dim; }
    Monologue > .monologue--mark { color: ansi_magenta; text-style: bold; }
    Monologue > .monologue--cursor { color: ansi_green; }
    Monologue > .monologue--placeholder { text-style: dim italic; }
    Monologue > .monologue--hint { color: ansi_black; background: ansi_yellow; text-style: bold; }
    """
    COMPONENT_CLASSES = {"monologue--stamp", "monologue--mark", "monologue--cursor", "monologue--placeholder", "monologue--hint"}
    PLACEHOLDER = "The agent's inner monologue appears here as it speaks."

    def __init__(self, *, turn_gap_steps: int = 20, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.transcript = Transcript(turn_gap_steps)
        self._dirty = True
        self._lines: list[Strip] = []
        self._wrapped: dict[int, tuple[tuple, list[Strip]]] = {}
        self.following = True
        self._placed_y: float | None = None  # where the view last put scroll_y itself

    def on_mount(self) -> None:
        self.flush()

    def on_resize(self) -> None:
        self._dirty = True
        self.flush()

    def add(self, ev: StepEvent) -> None:
        """Take one step; call `flush()` once after a batch."""
        self._dirty |= self.transcript.add(ev)

    def clear(self) -> None:
        self.transcript.clear()
        self.following, self._placed_y = True, None
        self._dirty = True
        self.flush()

    def flush(self) -> None:
        """Rewrap what changed and redraw, staying pinned to the end if the view was there."""
        if not self._dirty or not self.is_mounted:
            return
        self._dirty = False
        width = self.scrollable_content_region.width
        if width <= 0:
            return
        self._update_following()
        self._lines = self._wrap_all(width)
        self.virtual_size = Size(width, len(self._lines))
        if self.following:
            # Set directly: scroll_end(immediate=True) would still read the old maximum
            # when the layout has not caught up with the new virtual size yet.
            self.scroll_target_y = self.scroll_y = self._placed_y = self.max_scroll_y
        self.refresh()

    def _update_following(self) -> None:
        """Follow unless the user has moved the view away from the end since we placed it."""
        if self._placed_y is None or self.scroll_y != self._placed_y:
            following = self.scroll_y >= self.max_scroll_y
            if following != self.following:
                self.following = following
                self.refresh()  # the "new text" hint comes or goes
            self._placed_y = self.scroll_y

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new != self._placed_y:
            self._update_following()

    @property
    def newer_below(self) -> bool:
        """True when the user scrolled back and newer lines are out of view."""
        return not self.following and self.scroll_y < self.max_scroll_y

    def _wrap_all(self, width: int) -> list[Strip]:
        entries = self.transcript.entries
        if not entries:
            return self._wrap(Text(self.PLACEHOLDER, self._style("placeholder")), width)
        speaking = self.transcript.speaking
        cache, lines = {}, []
        for i, entry in enumerate(entries):
            live = speaking and i == len(entries) - 1
            key = (entry.start, entry.kind, entry.text, live, width)
            hit = self._wrapped.get(id(entry))
            strips = hit[1] if hit and hit[0] == key else self._wrap(self._entry_text(entry, live), width)
            cache[id(entry)] = (key, strips)
            lines.extend(strips)
        self._wrapped = cache
        return lines

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"monologue--{name}", partial=True)

    def _entry_text(self, entry: Entry, live: bool) -> Text:
        text = Text(format_clock(entry.start, tenths=False) + " ", self._style("stamp"))
        if entry.kind == "mark":
            text.append("◆ mark", self._style("mark"))
        else:
            text.append(entry.text)
        if live:
            text.append(CURSOR, self._style("cursor"))
        return text

    def _wrap(self, text: Text, width: int) -> list[Strip]:
        console = self.app.console
        return [Strip(line) for line in console.render_lines(text, console.options.update(width=width, height=None), pad=False)]

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        if y == self.scrollable_content_region.height - 1 and self.newer_below:
            return runs_to_strip([(" " * max(0, width - len(NEWER_HINT)), None), (NEWER_HINT, self._style("hint"))], width)
        strip = self._lines[index] if index < len(self._lines) else Strip.blank(width)
        return strip.crop_extend(scroll_x, scroll_x + width, None).apply_style(self.rich_style)
