"""Two lines at the top: what is running, as what, with which voice and prompt, recorded where."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from ppchat.tui.widgets.monologue import clock

STATE_STYLES = {
    "live": ("● LIVE", Style(color="black", bgcolor="green", bold=True)),
    "starting": ("◌ PREFILL", Style(color="black", bgcolor="yellow", bold=True)),
    "stopping": ("◌ SAVING", Style(color="black", bgcolor="yellow", bold=True)),
    "stopped": ("■ STOPPED", Style(reverse=True, bold=True)),
    "replay": ("▶ REPLAY", Style(color="black", bgcolor="cyan", bold=True)),
    "paused": ("‖ PAUSED", Style(color="black", bgcolor="cyan", bold=True)),
    "monitor": ("◉ MONITOR", Style(color="black", bgcolor="cyan", bold=True)),
    "disconnected": ("○ NO LINK", Style(color="black", bgcolor="red", bold=True)),
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


@dataclass
class Status:
    state: str = "stopped"
    info: dict = field(default_factory=dict)
    elapsed: float = 0.0
    muted: bool = False
    half_duplex: bool = False
    extra: str = ""  # e.g. replay speed
    playback: bool = False  # session_dir is being replayed, not recorded


class StatusBar(Widget):
    """The console's header: state, model (with DEMO badge), quantization, voice, prompt, devices, recording."""

    DEFAULT_CSS = """
    StatusBar { height: 2; width: 1fr; background: $panel; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.status = Status()

    def set(self, **changes) -> None:
        """Update fields of `status`; redraws only if something changed."""
        changed = False
        for key, value in changes.items():
            old = getattr(self.status, key)
            if old != value:
                setattr(self.status, key, value)
                # The clock shows whole seconds: finer changes need no redraw.
                changed |= key != "elapsed" or clock(old) != clock(value)
        if changed:
            self.refresh()

    def render(self) -> Text:
        return self.render_text(self.content_size.width)

    def render_text(self, width: int) -> Text:
        st, info = self.status, self.status.info
        dim, bold = Style(dim=True), Style(bold=True)
        sep = (" │ ", dim)
        label, style = STATE_STYLES.get(st.state, (st.state.upper(), Style(reverse=True)))
        line1 = Text(no_wrap=True, overflow="ellipsis")
        line1.append(f" {label} ", style).append(f" {clock(st.elapsed)}", bold)
        if st.extra:
            line1.append(" ").append(st.extra, dim)
        # Mic state first: it is what a person most needs to see at a glance.
        for on, badge in ((st.muted, "MUTED"), (st.half_duplex, "HALF-DUPLEX")):
            if on:
                line1.append(" ").append(f" {badge} ", Style(color="black", bgcolor="yellow", bold=True))
        line1.append(*sep).append(str(info.get("model") or "no model"), bold)
        if info.get("is_demo"):
            line1.append(" ").append(" DEMO ", Style(color="black", bgcolor="magenta", bold=True))
        if info.get("quantization"):
            line1.append(" ").append(str(info["quantization"]), dim)
        line1.append(*sep).append("voice ", dim).append(str(info.get("voice") or "–"), bold)
        line1.append(*sep).append("prompt ", dim).append(str(info.get("prompt_name") or "custom"), bold)
        line2 = Text(no_wrap=True, overflow="ellipsis")
        line2.append("in ", dim).append(str(info.get("input_device") or "–"))
        line2.append(" → out ", dim).append(str(info.get("output_device") or "–"))
        session = info.get("session_dir")
        line2.append(*sep)
        if session:
            if st.playback:
                line2.append("session ", dim)
            else:
                line2.append("● rec ", Style(color="red", bold=True))
            line2.append(short_path(str(session), max(10, width - line2.cell_len - 1)))
        else:
            line2.append("not recording", dim)
        return Text("\n").join([line1, line2])
