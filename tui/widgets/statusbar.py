"""Two lines at the top: what is running, as what, with which voice and prompt, recorded where."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from ppchat.engine.transcript import format_clock

STATE_LABELS = {
    "live": "● LIVE", "starting": "◌ PREFILL", "stopping": "◌ SAVING", "stopped": "■ STOPPED", "replay": "▶ REPLAY",
    "paused": "‖ PAUSED", "ended": "■ END", "monitor": "◉ MONITOR", "disconnected": "○ NO LINK",
}


def short_path(path: str | None, width: int) -> str:
    """`path` with the home directory as ~ and the middle elided to fit `width` cells."""
    if not path:
        return ""
    home = os.path.expanduser("~")
    if home != "/" and (path == home or path.startswith(home + os.sep)):
        path = "~" + path[len(home):]
    if len(path) <= width or width < 5:
        return path
    keep = width - 1
    return path[: keep // 3] + "…" + path[len(path) - (keep - keep // 3):]


MESSAGE_SECONDS = 8.0  # how long an information notice stays on the second line


@dataclass
class Status:
    state: str = "stopped"
    info: dict = field(default_factory=dict)
    elapsed: float = 0.0
    muted: bool = False
    half_duplex: bool = False
    extra: str = ""  # e.g. replay speed, prefill progress
    # Which ppchat a monitor shows ("pid 4242"), and a badge beside it ("SWITCHED" once it follows
    # another one): the start of the second line, before the recording's path.
    source: str = ""
    source_badge: str = ""
    playback: bool = False  # session_dir is being replayed, not recorded
    message: str = ""  # the latest information notice, for a few seconds (`StatusBar.say`)


class StatusBar(Widget):
    """The console's header: state, model (with DEMO badge), quantization, voice, prompt, devices, recording."""

    DEFAULT_CSS = """
    StatusBar { height: 2; width: 1fr; background: $panel; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    StatusBar > .statusbar--live { color: ansi_black; background: ansi_green; text-style: bold; }
    StatusBar > .statusbar--starting, StatusBar > .statusbar--stopping { color: ansi_black; background: ansi_yellow; text-style: bold; }
    StatusBar > .statusbar--stopped, StatusBar > .statusbar--ended { text-style: bold reverse; }
    StatusBar > .statusbar--replay, StatusBar > .statusbar--paused, StatusBar > .statusbar--monitor {
        color: ansi_black; background: ansi_cyan; text-style: bold;
    }
    StatusBar > .statusbar--disconnected { color: ansi_black; background: ansi_red; text-style: bold; }
    StatusBar > .statusbar--badge { color: ansi_black; background: ansi_yellow; text-style: bold; }
    StatusBar > .statusbar--demo { color: ansi_black; background: ansi_magenta; text-style: bold; }
    StatusBar > .statusbar--rec { color: ansi_red; text-style: bold; }
    StatusBar > .statusbar--label { text-style: dim; }
    StatusBar > .statusbar--value { text-style: bold; }
    """
    COMPONENT_CLASSES = {f"statusbar--{name}" for name in (*STATE_LABELS, "badge", "demo", "rec", "label", "value")}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.status = Status()
        self._message_timer = None

    def say(self, message: str, seconds: float = MESSAGE_SECONDS) -> None:
        """Show `message` at the end of the second line for `seconds`, or until the next one."""
        if self._message_timer is not None:
            self._message_timer.stop()
        self.set(message=message)
        self._message_timer = self.set_timer(seconds, lambda: self.set(message=""))

    def set(self, **changes) -> None:
        """Update fields of `status`; redraws only if something changed."""
        changed = False
        for key, value in changes.items():
            old = getattr(self.status, key)
            if old != value:
                setattr(self.status, key, value)
                # The clock shows whole seconds: finer changes need no redraw.
                changed |= key != "elapsed" or format_clock(old, tenths=False) != format_clock(value, tenths=False)
        if changed:
            self.refresh()

    def _style(self, name: str) -> Style:
        if not self.is_attached:
            return Style()  # drawn outside an app (tests of the layout): no stylesheet
        return self.get_component_rich_style(f"statusbar--{name}", partial=True)

    def render(self) -> Text:
        return self.render_text(self.content_size.width)

    def render_text(self, width: int) -> Text:
        st, info = self.status, self.status.info
        dim, bold = self._style("label"), self._style("value")
        state = str(st.state)
        label, style = STATE_LABELS.get(state, state.upper()), self._style(state if state in STATE_LABELS else "stopped")
        head = [(f" {label} ", style)]
        if not (state == "starting" and st.extra):  # conditioning: how far it has got, not a clock at 00:00
            head.append((f" {format_clock(st.elapsed, tenths=False)}", bold))
        if st.extra:
            head += [(" ", None), (st.extra, dim)]
        # Mic state first: it is what a person most needs to see at a glance.
        for on, badge in ((st.muted, "MUTED"), (st.half_duplex, "HALF-DUPLEX")):
            if on:
                head += [(" ", None), (f" {badge} ", self._style("badge"))]
        model = [(str(info.get("model") or "no model"), bold)]
        demo = [(" DEMO ", self._style("demo"))] if info.get("is_demo") else []
        quantization = info.get("quantization")
        # session.json writes "none" for full-precision weights; alone in the bar that word reads as missing data
        quant = [("unquantised" if quantization == "none" else str(quantization), dim)] if quantization else []
        voice = [("voice ", dim), (os.path.basename(str(info.get("voice") or "–")) or "–", bold)]  # a file: its name
        prompt = [("prompt ", dim), (str(info.get("prompt_name") or "custom"), bold)]
        # DEMO is essential (the agent babbles because its weights are random), the name is not;
        # a voice file's name shrinks before anything essential goes.
        line1 = fit_items([
            Item(head, 9),
            Item(demo, 6, joined_to_next=True),
            Item(model, 3, joined_to_next=bool(quant)),
            Item(quant, 1),
            Item(voice, 7, shrink=True),
            Item(prompt, 8, shrink=True),
        ], width)

        devices = [("in ", dim), (str(info.get("input_device") or "–"), None),
                   (" → out ", dim), (str(info.get("output_device") or "–"), None)]
        source = [(f" {st.source_badge} ", self._style("badge")), (" ", None)] if st.source_badge else []
        source += [(st.source, bold)] if st.source else []
        session = info.get("session_dir")
        if session:
            rec = [("session ", dim)] if st.playback else [("● rec ", self._style("rec"))]
            rec[-1] = (rec[-1][0].rstrip(), rec[-1][1])
            path = short_path(str(session), len(str(session)))  # ~ for the home folder
            what = [Item(rec, 9, joined_to_next=True), Item([(path, None)], 8, path=True)]
        else:
            what = [Item([("not recording", dim)], 9)]
        message = [(st.message, None)] if st.message else []
        line2 = fit_items([Item(source, 10), Item(devices, 2), *what, Item(message, 7, shrink=True)], width)
        return Text("\n").join([line1, line2])


@dataclass
class Item:
    """A part of a status line. When the line is too long, items go lowest `priority`
    first; a `shrink` item is cut short (with …) before anything essential goes, a `path`
    item is elided in the middle."""

    runs: list
    priority: int
    shrink: bool = False
    path: bool = False
    joined_to_next: bool = False  # a space, not a separator, between this item and the next

    @property
    def width(self) -> int:
        return sum(len(text) for text, _ in self.runs)


SEPARATOR = (" │ ", Style(dim=True))
MIN_SHRUNK = 14  # a shrinking item keeps at least this many cells ("prompt " and 7 of its own)
ESSENTIAL = 5  # items at or above this priority go only when nothing else is left to drop


def fit_items(items: list[Item], width: int) -> Text:
    """Lay out `items` on one line of `width` cells, dropping and shortening as needed:
    first the optional items (priority below `ESSENTIAL`) go, least important first,
    then the elastic items are shortened, then whatever is still too much goes."""
    items = [item for item in items if item.runs]
    original = list(items)

    def joined(n: int) -> bool:
        """Item n is followed by a space, not a separator: it was joined to the next one, still there."""
        return items[n].joined_to_next and original.index(items[n + 1]) == original.index(items[n]) + 1

    def overflow() -> int:
        gaps = sum(1 if joined(n) else len(SEPARATOR[0]) for n in range(len(items) - 1))
        return sum(p.width for p in items) + gaps - width

    def drop(candidates: list[Item]) -> None:
        for item in sorted(candidates, key=lambda i: i.priority):
            if overflow() <= 0:
                return
            items.remove(item)

    drop([i for i in items if i.priority < ESSENTIAL])
    for item in items:
        if (item.shrink or item.path) and overflow() > 0:
            _shorten(item, item.width - overflow())
    drop(list(items))
    line = Text(no_wrap=True, overflow="ellipsis")
    for n, item in enumerate(items):
        for text, style in item.runs:
            line.append(text, style)
        if n < len(items) - 1:
            line.append(" ") if joined(n) else line.append(*SEPARATOR)
    line.truncate(width, overflow="ellipsis")
    return line


def _shorten(item: Item, target: int) -> int:
    """Cut `item`'s last run so that the item is about `target` cells wide; returns the cells saved."""
    text, style = item.runs[-1]
    fixed = item.width - len(text)
    room = max(MIN_SHRUNK, target) - fixed
    if room >= len(text):
        return 0
    if item.path:
        new = short_path(text, max(5, room))
    else:
        new = text[: max(1, room - 1)].rstrip() + "…"
    item.runs[-1] = (new, style)
    return len(text) - len(new)
