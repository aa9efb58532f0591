"""The session browser: recorded conversations as a table, newest first; enter replays one.

Columns: when it started, its length (growing while a session is being recorded), what
made it (talk, respond, served), the voice, the step-time p95, its status and the first
line of the role prompt. `o` cycles the column the table is sorted by, `O` reverses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Label

from ppchat.engine.transcript import format_clock
from ppchat.errors import PPChatError
from ppchat.sessions.schema import USER_WAV
from ppchat.sessions.store import SessionSummary, default_sessions_root, list_sessions, load_session
from ppchat.sessions.wav_writer import read_wav_layout
from ppchat.tui.console import HELP_BINDING
from ppchat.tui.pickers import is_file_voice
from ppchat.tui.widgets.footer import ConsoleFooter

STATUS_STYLES = {
    "ok": "green", "recovered": "yellow", "partial": "yellow", "live": "bold cyan", "corrupt": "red", "failed": "red", "empty": "dim",
}
# (key, header, how the column sorts)
COLUMNS = [
    ("started", "started", lambda s: s.started.timestamp() if s.started else 0.0),
    ("length", "length", lambda s: s.duration_s),
    ("kind", "kind", lambda s: s.kind),
    ("voice", "voice", lambda s: s.voice.lower()),
    ("p95", "p95 ms", lambda s: s.p95_ms if s.p95_ms is not None else -1.0),
    ("status", "status", lambda s: s.status),
    ("prompt", "prompt", lambda s: prompt_line(s.role_prompt).lower()),
]


def prompt_line(prompt: str) -> str:
    """The role prompt's first line (the rest shows in the replay)."""
    return next((line.strip() for line in prompt.splitlines() if line.strip()), "")


def recorded_length(summary: SessionSummary) -> float:
    """The session's length; for one being recorded, what its audio track holds so far."""
    if summary.status != "live":
        return summary.duration_s
    try:
        layout = read_wav_layout(summary.path / USER_WAV)
    except PPChatError:
        return summary.duration_s
    return layout.available_bytes / layout.block_align / layout.sample_rate


VOICE_WIDTH = 16  # a voice file's name is cut to this: the full path pushed p95, status and prompt off screen


def voice_cell(voice: str) -> Text:
    """A preset by name, an audio file by its file name (the replay shows the path)."""
    name = os.path.basename(voice) if is_file_voice(voice) else voice
    text = Text(name or "–", "cyan")
    if text.cell_len > VOICE_WIDTH:
        text.truncate(VOICE_WIDTH - 1)
        text.append("…", "cyan")
    return text


def session_cells(s: SessionSummary) -> list[Text]:
    started = s.started.strftime("%m-%d %H:%M") if s.started else "??-?? ??:??"
    prompt = prompt_line(s.role_prompt)
    p95 = "…" if s.status == "live" else ("–" if s.p95_ms is None else f"{s.p95_ms:.0f}")
    return [
        Text(started, "bold"),
        Text(format_clock(recorded_length(s), tenths=False), justify="right"),
        Text(s.kind or "?"),
        voice_cell(s.voice or ""),
        Text(p95, justify="right"),
        Text(s.status, STATUS_STYLES.get(s.status, "")),
        Text(prompt, "italic"),
    ]


class SessionBrowser(Screen):
    """Lists the sessions under `root` (default: the standard sessions folder)."""

    DEFAULT_CSS = """
    SessionBrowser > Vertical { padding: 0 1; }
    SessionBrowser .title { text-style: bold; }
    SessionBrowser .hint { color: $text-muted; }
    SessionBrowser DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("enter", "replay", "Replay", show=True, priority=True),
        Binding("escape,q", "close", "Back"),
        HELP_BINDING,
        Binding("o", "sort(1)", "Sort"),
        Binding("O", "sort(0)", "Reverse", key_display="O"),
        Binding("r", "reload", "Reload"),
    ]
    HELP_KEYS = [
        ("↑↓ PgUp PgDn", "choose a session"),
        ("enter", "replay it"),
        ("o", "sort by the next column"),
        ("O", "reverse the order"),
        ("r", "read the folder again"),
        ("esc, q", "back"),
    ]

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root) if root else default_sessions_root()
        self.summaries: list[SessionSummary] = []
        self.sort_column = 0  # index into COLUMNS
        self.descending = True  # newest first

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Sessions", classes="title")
            yield Label(self._hint(), classes="hint", id="hint")
            yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield ConsoleFooter(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for key, header, _ in COLUMNS:
            table.add_column(header, key=key)
        self.action_reload()
        self.set_interval(1.0, self._grow_live_rows)

    def on_resize(self) -> None:
        self._fill()

    def _hint(self) -> str:
        order = "↓" if self.descending else "↑"
        return f"sorted by {COLUMNS[self.sort_column][1]} {order} · {self.root}"

    def action_reload(self) -> None:
        try:
            self.summaries = list_sessions(self.root)
        except PPChatError as exc:
            self.summaries = []
            self.notify(str(exc), severity="error", timeout=15)
        self._fill()

    def _fill(self) -> None:
        if not self.is_mounted:
            return
        table = self.query_one("#sessions", DataTable)
        sort_key = COLUMNS[self.sort_column][2]
        self.summaries.sort(key=sort_key, reverse=self.descending)
        table.clear()
        if not self.summaries:
            table.add_row(Text("No recorded sessions yet: talk with space on the main screen.", "dim italic"))
            return
        rows = [session_cells(summary) for summary in self.summaries]
        # The prompt gets what the other columns leave: one line per session, always.
        others = sum(max([len(header)] + [row[n].cell_len for row in rows]) + 2 for n, (_, header, _) in enumerate(COLUMNS[:-1]))
        prompt_width = max(12, self.size.width - 4 - others)
        for i, cells in enumerate(rows):
            prompt = cells[-1]
            if prompt.cell_len > prompt_width:
                prompt.truncate(prompt_width - 1)
                prompt.append("…")
            table.add_row(*cells, key=str(i))
        table.focus()
        self.query_one("#hint", Label).update(self._hint())

    def _grow_live_rows(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for i, summary in enumerate(self.summaries):
            if summary.status == "live":
                table.update_cell(str(i), "length", Text(format_clock(recorded_length(summary), tenths=False), justify="right"))

    def action_sort(self, next_column: int) -> None:
        if next_column:
            self.sort_column = (self.sort_column + 1) % len(COLUMNS)
            self.descending = COLUMNS[self.sort_column][0] in ("started", "length", "p95")
        else:
            self.descending = not self.descending
        self._fill()

    def on_data_table_header_selected(self, message: DataTable.HeaderSelected) -> None:
        index = next(i for i, (key, _, _) in enumerate(COLUMNS) if key == message.column_key.value)
        if index == self.sort_column:
            self.descending = not self.descending
        else:
            self.sort_column, self.descending = index, COLUMNS[index][0] in ("started", "length", "p95")
        self._fill()

    def action_replay(self) -> None:
        from ppchat.tui.replay import ReplayScreen

        table = self.query_one("#sessions", DataTable)
        if not self.summaries or table.cursor_row is None:
            return
        summary = self.summaries[table.cursor_row]
        try:
            session = load_session(summary.path)
        except PPChatError as exc:
            self.notify(str(exc), severity="error", timeout=15)
            return
        self.app.push_screen(ReplayScreen(session))

    def action_close(self) -> None:
        self.app.pop_screen()
