"""Engine notices on screen, shared by the console, the replay screen and the monitor.

Warnings and errors are toasts: something went wrong and the user should look. Information
(conditioning, "live (prefill …)", the echo canceller's loop delay, "saved …") is not: four of
those at start-up covered the right half of an 80×24 console for seconds. It shows on the status
bar's second line for a few seconds instead (`StatusBar.say`). Every notice of the run, of any level, is kept in
the app's `NoticeLog` and listed by the notices screen (`n`).
"""

from __future__ import annotations

import collections
import time

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ppchat.engine.events import NoticeEvent
from ppchat.tui.widgets.footer import ConsoleFooter

SEVERITY = {"info": "information", "warning": "warning", "error": "error"}
LEVEL_STYLE = {"warning": "bold yellow", "error": "bold red"}


def notify_event(app: App, notice: NoticeEvent) -> None:
    """Show an engine notice as a toast; errors stay up longer than warnings."""
    timeout = {"error": 30.0, "warning": 12.0}.get(notice.level, 5.0)
    app.notify(notice.message, severity=SEVERITY.get(notice.level, "information"), timeout=timeout)


class NoticeLog:
    """The notices of this run, oldest first (the last `maxlen`)."""

    def __init__(self, maxlen: int = 500) -> None:
        self.entries: collections.deque[NoticeEvent] = collections.deque(maxlen=maxlen)

    def add(self, notice: NoticeEvent) -> None:
        if not notice.wall_time:
            notice = NoticeEvent(notice.level, notice.message, time.time())
        self.entries.append(notice)


class NoticesScreen(ModalScreen[None]):
    """Every notice of this run, newest last; any of esc, q, n closes it."""

    DEFAULT_CSS = """
    NoticesScreen { align: center middle; }
    NoticesScreen > VerticalScroll {
        width: 90%; max-width: 110; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS = [Binding("escape,q,n", "close", "Close")]

    def __init__(self, notices: list[NoticeEvent]) -> None:
        super().__init__()
        self.notices = notices

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = "Notices of this run, newest last"
            yield Static(self._table(), id="notices")
        yield ConsoleFooter(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).scroll_end(animate=False)

    def _table(self) -> Table | Text:
        if not self.notices:
            return Text("No notices yet.", style="dim")
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, style="dim")
        table.add_column(no_wrap=True)
        table.add_column(ratio=1)
        for notice in self.notices:
            clock = time.strftime("%H:%M:%S", time.localtime(notice.wall_time)) if notice.wall_time else ""
            table.add_row(clock, Text(notice.level, style=LEVEL_STYLE.get(notice.level, "")), notice.message)
        return table

    def action_close(self) -> None:
        self.dismiss(None)
