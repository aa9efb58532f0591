"""The footer of the console's screens: the keys of what is on screen."""

from __future__ import annotations

from rich.cells import cell_len
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class ConsoleFooter(Footer):
    """Textual's footer, filled in also while the terminal window is not focused, and
    showing only keys that fit whole.

    Textual's own skips binding updates while the app has no focus, and its first fill
    is such an update: a console started in a tmux pane that was not the active one (or
    a window the user switched away from while the model loaded) showed an empty footer
    until the window was focused, e.g. the console watched from the next pane. And it
    cuts the line at the edge: the main screen's footer ended in "k M" at 80 columns.
    The keys are in order of importance, and `?` lists them all.
    """

    def bindings_changed(self, screen) -> None:
        self._bindings_ready = True
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self.recompose)

    async def recompose(self) -> None:
        await super().recompose()
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        room = self.size.width
        used = 0
        for key in self.query(FooterKey):
            # compact: "key description" and a one-cell gap before the next key
            width = cell_len(f"{key.key_display} {key.description}")
            key.display = used + width <= room
            used += width + 1
