"""Role prompts: the text that conditions who the agent is (spec §6.4).

The presets are the prompt styles PersonaPlex's README documents; the "assistant" one
is the reference offline tool's default. A prompt can also be free text or a file.
The `<system>` wrapping happens at tokenisation (`models.tokenizer.wrap_system_prompt`).
"""

from __future__ import annotations

from pathlib import Path

from ppchat.errors import PPChatError

# The reference web UI caps prompts at 1000 characters; longer ones only push the
# conversation out of the 3000-frame context sooner.
MAX_PROMPT_CHARS = 1000

PRESETS: dict[str, str] = {
    "assistant": (
        "You are a wise and friendly teacher. Answer questions or provide advice "
        "in a clear and engaging way."
    ),
    "casual": "You enjoy having a good conversation.",
    # The README's customer-service template ("You work for <Company> which is a <type> and
    # your name is <Name>. Information: <facts>") filled in with an example of ours.
    "customer-service": (
        "You work for Northwind Internet which is an internet provider and your name is Sam. "
        "Information: the customer's plan is Fiber 500; the next bill is due on the 12th; "
        "a technician visit costs 40 dollars and can be booked for weekdays."
    ),
}

DEFAULT_PROMPT = "assistant"


def resolve_prompt(spec: str | None) -> tuple[str, str]:
    """Turn `--prompt` into (name, text).

    `spec` is a preset name, `@path/to/file.txt` or a path to an existing `.txt` file,
    or free text. Empty prompts crash the reference, so they are refused here.
    """
    if spec is None:
        return DEFAULT_PROMPT, PRESETS[DEFAULT_PROMPT]
    if spec in PRESETS:
        return spec, PRESETS[spec]
    path = Path(spec[1:]) if spec.startswith("@") else Path(spec)
    if spec.startswith("@") or (path.suffix == ".txt" and path.exists()):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PPChatError(f"cannot read prompt file {path}: {exc}") from None
        return path.name, _check(text, str(path))
    return "custom", _check(spec, "--prompt")


def named_prompt(text: str) -> tuple[str, str]:
    """(name, text) for a prompt given as text, e.g. from the console's editor.

    A preset's name or exact text is named after the preset; anything else is "custom".
    Unlike `resolve_prompt`, nothing here is read as a file name.
    """
    if text in PRESETS:
        return text, PRESETS[text]
    stripped = text.strip()
    for name, preset in PRESETS.items():
        if stripped == preset:
            return name, preset
    return "custom", _check(text, "the prompt")


def _check(text: str, origin: str) -> str:
    text = text.strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Bytes that aren't UTF-8 reach Python as lone surrogates (PEP 383); the tokenizer can't take them.
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise PPChatError(
            f"the role prompt from {origin} is not UTF-8 text (byte 0x{bad.hex()} at character {exc.start + 1}); "
            "set your terminal to UTF-8 or save the prompt as a UTF-8 file and pass --prompt @FILE"
        ) from None
    if not text:
        raise PPChatError(
            f"the role prompt from {origin} is empty; give some text or a preset "
            f"({', '.join(PRESETS)})"
        )
    if len(text) > MAX_PROMPT_CHARS:
        raise PPChatError(
            f"the role prompt from {origin} has {len(text)} characters; keep it under {MAX_PROMPT_CHARS}"
        )
    return text
