"""What the three console apps share (the live console, `ppchat replay`, `ppchat monitor`).

`ConsoleApp` carries the stylesheet, the size breakpoints and the help key. `LivePump`
is the redraw loop of a screen or app that shows a `LiveView`: a timer (12 Hz by
default) drains the host's bus subscription, `select_events` filters the batch,
`LiveView.apply` feeds every widget and redraws each once, engine notices are shown
(`show_notice`) and `after_batch` updates the status bar.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding

from ppchat.engine.events import Subscription
from ppchat.tui.help import HelpScreen
from ppchat.tui.live_view import LiveView
from ppchat.tui.notices import NoticeLog, NoticesScreen, notify_event
from ppchat.tui.widgets.footer import ConsoleFooter
from ppchat.tui.widgets.statusbar import StatusBar

HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall"), (48, "-very-tall")]


class ConsoleApp(App):
    """Base of the console apps: one stylesheet (app.tcss), one set of breakpoints, `?` help."""

    CSS_PATH = "app.tcss"
    HORIZONTAL_BREAKPOINTS = HORIZONTAL_BREAKPOINTS
    VERTICAL_BREAKPOINTS = VERTICAL_BREAKPOINTS
    HELP_KEYS: list[tuple[str, str]] = []  # (key, what it does) for the help screen
    # Textual's ctrl+c only says "Press ctrl+q to quit the app": in a terminal it means quit.
    BINDINGS = [Binding("ctrl+c", "interrupt", "Quit", show=False), Binding("n", "app.notices", "Notices", show=False)]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notice_log = NoticeLog()  # every engine notice of this run (`n` lists them)

    async def action_interrupt(self) -> None:
        """Ctrl-C: quit as `q` does, with the exit status of an interrupt (130)."""
        self.exit(return_code=130)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_keys()))

    def action_notices(self) -> None:
        if not isinstance(self.screen, NoticesScreen):
            self.push_screen(NoticesScreen(list(self.notice_log.entries)))

    def help_keys(self) -> list[tuple[str, str]]:
        """The keys of what is on screen now, for the help screen."""
        keys = getattr(self.screen, "HELP_KEYS", None) or self.HELP_KEYS
        return list(keys) + [("n", "notices: every message of this run, with its time (information shows on "
                                   "the status bar's second line for a few seconds; warnings and errors pop up)"),
                             ("?", "this help"), ("ctrl+p", "command palette")]


HELP_BINDING = Binding("question_mark", "app.help", "Help", key_display="?")


class LivePump:
    """Mixin for an App or Screen showing a LiveView: the drain → apply → status loop.

    The host composes with `compose_live()`, calls `start_pump(subscription)` when
    mounted, and may override `select_events` and `after_batch`.
    """

    refresh_hz: float = 12.0
    live: LiveView
    status_bar: StatusBar

    def compose_live(self) -> ComposeResult:
        # Held by reference: the redraw timer uses them 12 times a second.
        self.status_bar = StatusBar(id="status")
        self.live = LiveView(id="live")
        yield self.status_bar
        yield self.live
        # No palette hint: at 80 columns it pushes keys off the footer (ctrl+p still works,
        # and the help screen says so).
        yield ConsoleFooter(compact=True, show_command_palette=False)

    def start_pump(self, subscription: Subscription) -> None:
        self._feed = subscription
        self.set_interval(1.0 / self.refresh_hz, self.pump)

    def pump(self) -> None:
        """Apply everything published since the last tick, in one redraw."""
        if not self.live.children:
            return  # not composed yet, or being taken down: the events wait for the next tick
        events = self.select_events(self._feed.drain())
        if events:
            for notice in self.live.apply(events):
                self.show_notice(notice)
        self.after_batch(events)

    def show_notice(self, notice) -> None:
        """Log it; information on the status bar for a few seconds, warnings and errors as toasts."""
        log = getattr(self.app, "notice_log", None)
        if log is not None:
            log.add(notice)
        if notice.level == "info":
            self.status_bar.say(notice.message)
        else:
            notify_event(self.app, notice)

    def select_events(self, events: list) -> list:
        return events

    def after_batch(self, events: list) -> None:
        pass
