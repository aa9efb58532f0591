"""SentencePiece text tokenizer, as PersonaPlex uses it (spec §2.5, §6.4)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece

from ppchat.constants import NO_TEXT_IDS, WORD_START
from ppchat.errors import CheckpointError, PPChatError

SYSTEM_TAG = "<system>"


def wrap_system_prompt(text: str) -> str:
    """Wrap a role prompt in `<system>` tags exactly like the reference `wrap_with_system_tags`.

    Raises PPChatError for an empty prompt, which crashes the reference.
    """
    prompt = text.strip()
    if not prompt.replace(SYSTEM_TAG, "").strip():
        raise PPChatError("the text prompt is empty; give the model a role, e.g. 'You enjoy having a good conversation.'")
    if prompt.startswith(SYSTEM_TAG) and prompt.endswith(SYSTEM_TAG):
        return prompt
    return f"{SYSTEM_TAG} {prompt} {SYSTEM_TAG}"


class TextTokenizer:
    """Thin wrapper around `sentencepiece.SentencePieceProcessor`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"text tokenizer {self.path} does not exist; re-run `ppchat download`")
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{self.path} is not a SentencePiece model ({exc}); re-run `ppchat download`") from None

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS (as `SentencePieceProcessor.encode`)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PPChatError(f"the text {text[:40]!r} is not valid UTF-8; give the prompt as UTF-8 text") from None
        return list(self._sp.EncodeAsIds(text))

    def encode_system_prompt(self, text: str) -> list[int]:
        """Ids of the wrapped role prompt: one LM call per id in the text-prompt phase."""
        return self.encode(wrap_system_prompt(text))

    def piece(self, token_id: int) -> str | None:
        """Display text of one sampled token; None for padding ids and ids outside the vocabulary."""
        if token_id in NO_TEXT_IDS or not 0 <= token_id < self.vocab_size:
            return None
        return self._sp.IdToPiece(int(token_id)).replace(WORD_START, " ")
