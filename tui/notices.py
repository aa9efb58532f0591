"""Engine notices as Textual toasts, shared by the console, the replay screen and the monitor."""

from __future__ import annotations

from textual.app import App

from ppchat.engine.events import NoticeEvent

SEVERITY = {"info": "information", "warning": "warning", "error": "error"}


def notify_event(app: App, notice: NoticeEvent) -> None:
    """Show an engine notice as a toast; warnings and errors stay up longer."""
    timeout = {"error": 30.0, "warning": 12.0}.get(notice.level, 5.0)
    app.notify(notice.message, severity=SEVERITY.get(notice.level, "information"), timeout=timeout)
