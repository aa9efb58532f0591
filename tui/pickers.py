"""Modal pickers for the voice and the role prompt (with a free-text editor)."""

from __future__ import annotations

import os

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, TextArea
from textual.widgets.option_list import Option

PICKER_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 90%; max-width: 100; height: 90%; max-height: 30;
    border: round $accent; background: $surface; padding: 0 1;
}}
{name} .picker-title {{ text-style: bold; width: 1fr; }}
{name} .picker-hint {{ color: $text-muted; width: 1fr; }}
"""


def voice_label(voice: str) -> Text:
    """Presets by name; custom WAVs by file name with their folder dimmed."""
    if os.sep in voice or voice.lower().endswith(".wav"):
        head, tail = os.path.split(voice)
        return Text.assemble((tail, "bold"), ("  " + head, "dim") if head else "")
    return Text(voice)


class VoicePicker(ModalScreen[str | None]):
    """Pick one of `voices`; dismisses with the voice, or None when cancelled."""

    DEFAULT_CSS = PICKER_CSS.format(name="VoicePicker") + "VoicePicker OptionList { height: 1fr; }"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, voices: list[str], current: str | None = None) -> None:
        super().__init__()
        self.voices = list(voices)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Voice", classes="picker-title")
            yield Label("↑↓ choose · enter use (restarts the conversation) · esc cancel", classes="picker-hint")
            options = [Option(voice_label(v), id=f"v{i}") for i, v in enumerate(self.voices)]
            yield OptionList(*options, id="voices")

    def on_mount(self) -> None:
        voices = self.query_one("#voices", OptionList)
        if self.current in self.voices:
            voices.highlighted = self.voices.index(self.current)
        voices.focus()

    def on_option_list_option_selected(self, message: OptionList.OptionSelected) -> None:
        message.stop()
        self.dismiss(self.voices[message.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class PromptPicker(ModalScreen[tuple[str, str] | None]):
    """Pick a preset role prompt or edit one freely.

    Dismisses with (name, text) — name is "custom" when the text was edited — or None.
    """

    DEFAULT_CSS = PICKER_CSS.format(name="PromptPicker") + """
    PromptPicker OptionList { height: auto; max-height: 8; }
    PromptPicker TextArea { height: 1fr; min-height: 4; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "use_text", "Use edited text", priority=True),
    ]

    def __init__(self, prompts: dict[str, str], current_text: str = "", current_name: str | None = None) -> None:
        super().__init__()
        self.prompts = dict(prompts)
        self.names = list(self.prompts)
        self.current_text = current_text
        self.current_name = current_name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Role prompt", classes="picker-title")
            yield Label("enter use preset · tab edit text · ctrl+s use text · esc cancel", classes="picker-hint")
            yield OptionList(*[Option(n, id=f"p{i}") for i, n in enumerate(self.names)], id="prompt-names")
            yield TextArea(self.current_text, soft_wrap=True, id="prompt-text")

    def on_mount(self) -> None:
        names = self.query_one("#prompt-names", OptionList)
        if self.current_name in self.prompts:
            names.highlighted = self.names.index(self.current_name)
        names.focus()

    def on_option_list_option_highlighted(self, message: OptionList.OptionHighlighted) -> None:
        # Preview the highlighted preset in the editor, ready to be tweaked.
        self.query_one("#prompt-text", TextArea).text = self.prompts[self.names[message.option_index]]

    def on_option_list_option_selected(self, message: OptionList.OptionSelected) -> None:
        message.stop()
        name = self.names[message.option_index]
        self.dismiss((name, self.prompts[name]))

    def action_use_text(self) -> None:
        text = self.query_one("#prompt-text", TextArea).text.strip()
        if not text:
            self.notify("The prompt is empty: type a role or pick a preset.", severity="warning")
            return
        names = self.query_one("#prompt-names", OptionList)
        name = self.names[names.highlighted] if names.highlighted is not None and self.names else None
        self.dismiss((name, text) if name and self.prompts.get(name) == text else ("custom", text))

    def action_cancel(self) -> None:
        self.dismiss(None)
