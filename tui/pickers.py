"""Modal pickers for the voice and the role prompt (with a free-text editor)."""

from __future__ import annotations

import os
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, TextArea
from textual.widgets.option_list import Option

from ppchat.errors import PPChatError

PICKER_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 66; max-width: 100%; height: auto; max-height: 100%;
    border: round $accent; background: $surface; padding: 0 1;
}}
{name} .picker-title {{ text-style: bold; width: 1fr; }}
{name} .picker-hint {{ color: $text-muted; width: 1fr; }}
{name} .picker-note {{ color: $text-muted; text-style: italic; width: 1fr; }}
"""
NO_VOICE = "none"
FROM_FILE = "from-file"


def voice_label(voice: str) -> Text:
    """Presets by name; custom audio files by file name with their folder dimmed."""
    if voice == NO_VOICE:
        return Text.assemble("none", ("  no voice prompt", "dim"))
    if os.sep in voice or "." in os.path.basename(voice):
        head, tail = os.path.split(voice)
        return Text.assemble((tail, "bold"), ("  " + head, "dim") if head else "")
    return Text(voice)


def is_file_voice(voice: str) -> bool:
    return voice != NO_VOICE and (os.sep in voice or "." in os.path.basename(voice))


class VoicePicker(ModalScreen[str | None]):
    """Pick one of `voices`, or an audio file; dismisses with the voice, or None when cancelled.

    `check(voice)` raises a PPChatError naming the problem when a file cannot be used
    (the same checks as `--voice PATH`); the picker then shows it and stays open.
    """

    DEFAULT_CSS = PICKER_CSS.format(name="VoicePicker") + """
    VoicePicker OptionList { height: auto; max-height: 14; }
    VoicePicker #voice-error { color: $error; width: 1fr; height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, voices: list[str], current: str | None = None, check: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.voices = list(voices)
        self.current = current
        self.check = check
        self.presets = [v for v in self.voices if v != NO_VOICE and not is_file_voice(v)]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Voice", classes="picker-title")
            yield Label("↑↓ choose · enter use (restarts the conversation) · esc cancel", classes="picker-hint")
            if not self.presets:
                yield Label("No preset voices on this model: use an audio file (~10 s of speech).", classes="picker-note")
            options = [Option(voice_label(v), id=f"v{i}") for i, v in enumerate(self.voices)]
            options.append(Option(Text("From an audio file…", "italic"), id=FROM_FILE))
            yield OptionList(*options, id="voices")
            yield Input(placeholder="path to a WAV, FLAC, Ogg… (enter to use it)", id="voice-path")
            yield Label("", id="voice-error")

    def on_mount(self) -> None:
        self.query_one("#voice-path", Input).display = False
        self.query_one("#voice-error", Label).display = False
        voices = self.query_one("#voices", OptionList)
        if self.current in self.voices:
            voices.highlighted = self.voices.index(self.current)
        voices.focus()

    def on_option_list_option_selected(self, message: OptionList.OptionSelected) -> None:
        message.stop()
        if message.option.id == FROM_FILE:
            path = self.query_one("#voice-path", Input)
            path.display = True
            path.focus()
            return
        self.dismiss(self.voices[message.option_index])

    def on_input_submitted(self, message: Input.Submitted) -> None:
        message.stop()
        path = os.path.expanduser(message.value.strip())
        error = self.query_one("#voice-error", Label)
        if not path:
            error.update("Type the path of an audio file, or esc.")
            error.display = True
            return
        if self.check is not None:
            try:
                self.check(path)
            except PPChatError as exc:
                error.update(str(exc))
                error.display = True
                return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PromptPicker(ModalScreen[tuple[str, str] | None]):
    """Pick a preset role prompt or edit one freely.

    Dismisses with (name, text) — name is "custom" when the text was edited — or None.
    """

    DEFAULT_CSS = PICKER_CSS.format(name="PromptPicker") + """
    PromptPicker > Vertical { width: 90%; max-width: 100; }
    PromptPicker OptionList { height: auto; max-height: 8; }
    PromptPicker TextArea { height: 8; }
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
