"""The session browser: recorded conversations, newest first; enter replays one."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, OptionList
from textual.widgets.option_list import Option

from ppchat.errors import PPChatError
from ppchat.sessions.store import SessionSummary, default_sessions_root, list_sessions, load_session
from ppchat.tui.widgets.monologue import clock

STATUS_STYLES = {
    "ok": "green", "recovered": "yellow", "partial": "yellow", "live": "cyan", "corrupt": "red", "failed": "red", "empty": "dim",
}


def session_row(s: SessionSummary) -> Text:
    """One line: start, length, status, voice, p95 latency, the start of the role prompt."""
    started = s.started.strftime("%Y-%m-%d %H:%M") if s.started else "????-??-?? ??:??"
    prompt = " ".join(s.role_prompt.split())
    return Text.assemble(
        (started, "bold"), "  ", (f"{clock(s.duration_s):>7}", ""), "  ",
        (f"{s.status:<9}", STATUS_STYLES.get(s.status, "")), " ",
        (f"{s.voice or '–':<8.8}", "cyan"), " ",
        (f"p95 {s.p95_ms:3.0f} ms" if s.p95_ms is not None else "p95   – ms", "dim"), "  ",
        (prompt, "italic dim"),
        no_wrap=True, overflow="ellipsis",
    )


class SessionBrowser(Screen):
    """Lists the sessions under `root` (default: the standard sessions folder)."""

    DEFAULT_CSS = """
    SessionBrowser > Vertical { padding: 0 1; }
    SessionBrowser .title { text-style: bold; }
    SessionBrowser .hint { color: $text-muted; }
    SessionBrowser OptionList { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape,q", "close", "Back"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root) if root else default_sessions_root()
        self.summaries: list[SessionSummary] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Sessions", classes="title")
            yield Label(f"{self.root} · enter replays · esc back", classes="hint")
            yield OptionList(id="sessions")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        options = self.query_one("#sessions", OptionList)
        try:
            self.summaries = list(reversed(list_sessions(self.root)))
        except PPChatError as exc:
            self.summaries = []
            self.notify(str(exc), severity="error", timeout=15)
        options.clear_options()
        if not self.summaries:
            options.add_option(Option(Text("No recorded sessions yet: talk with space on the main screen.", "dim italic"), disabled=True))
            return
        options.add_options(Option(session_row(s), id=str(i)) for i, s in enumerate(self.summaries))
        options.highlighted = 0
        options.focus()

    def on_option_list_option_selected(self, message: OptionList.OptionSelected) -> None:
        from ppchat.tui.replay import ReplayScreen

        message.stop()
        summary = self.summaries[int(message.option.id)]
        try:
            session = load_session(summary.path)
        except PPChatError as exc:
            self.notify(str(exc), severity="error", timeout=15)
            return
        self.app.push_screen(ReplayScreen(session))

    def action_close(self) -> None:
        self.app.pop_screen()
