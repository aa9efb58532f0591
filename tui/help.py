"""The help screen (`?`): the keys, and what every figure on the screen means."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ppchat.tui.widgets.footer import ConsoleFooter

FIGURES = [
    ("mic / agent", "the waveforms: one column per 80 ms frame, newest at the right; the lowest and "
                    "highest sample of each 40 ms drawn up and down from the centre line on a dB scale "
                    "(-60 dBFS on the line, full scale at the edge). Coloured = speech, grey = quiet, "
                    "red = clipped, · = a frame the engine filled with silence, magenta = a mark (k). "
                    "The number is the newest frame's level (RMS, dBFS)."),
    ("monologue", "the agent's inner-monologue text as it is sampled; a new line, stamped with the "
                  "conversation clock, after a pause. It follows new text unless you scroll back "
                  "(End follows again)."),
    ("step ms", "compute time of each 80 ms step, newest at the right; ┈ is the 80 ms budget: a "
                "step above it is late. The top of the chart is 1.5 x the slowest step in view."),
    ("p50 p95 max", "median, 95th percentile and slowest step: of the last 20 s (250 steps) when "
                    "marked '20 s'; of the whole session, as the engine counts it, when marked 'session' "
                    "(ppchat monitor); of what this monitor saw when marked 'attach'."),
    ("RTF", "real-time factor: mean compute time over the 80 ms of audio each step covers; "
            "below 1 keeps up."),
    ("queue in / out", "frames waiting: microphone frames not yet processed, and agent frames "
                       "queued for the speaker."),
    ("late drop under xrun", "since the start: steps over budget; microphone frames dropped to "
                             "catch up (--max-backlog); speaker callbacks that found no audio; "
                             "audio device over/underruns (und/xr, or l/d/u/x, when large counts need the room)."),
    ("enc tmp dep dec", "mean ms per phase: Mimi encode, temporal transformer, depformer, Mimi "
                        "decode; the bar above shows them to scale, the full width being 80 ms."),
    ("AEC nn", "beside the mic: echo cancellation is on and removes about nn dB of the agent's "
               "voice from your microphone (-- until the agent has spoken; AECoff: switched off "
               "with a, the agent hears your raw microphone)."),
    ("status bar", "state and conversation clock, mic badges, model (DEMO = random weights), "
                   "quantisation, voice, role prompt; devices, the session folder and, for a few "
                   "seconds, the latest information notice (n lists them all). Less important items "
                   "leave first when the terminal is narrow."),
]


class HelpScreen(ModalScreen[None]):
    """Keys and figures; any of esc, q, ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 96; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._table("Keys", self.keys), id="help-keys")
            yield Static(self._table("What the figures mean", FIGURES), id="help-figures")
        # Its own footer: the one underneath said "q Quit", and here q closes the help.
        yield ConsoleFooter(compact=True, show_command_palette=False)

    @staticmethod
    def _table(title: str, rows: list[tuple[str, str]]) -> Table:
        table = Table.grid(padding=(0, 1))
        table.title = Text(title, style="bold")
        table.title_justify = "left"
        table.add_column(style="bold", no_wrap=True)
        table.add_column(ratio=1)
        for key, text in rows:
            table.add_row(key, text)
        return table

    def action_close(self) -> None:
        self.dismiss(None)
