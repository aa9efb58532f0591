"""SentencePiece wrapper against the reference tokenizer's own ids and pieces."""

import json

import pytest

from ppchat.errors import CheckpointError, PPChatError
from ppchat.models.tokenizer import TextTokenizer, wrap_system_prompt
from tests.conftest import fixtures_root


@pytest.fixture(scope="module")
def reference():
    spec = json.loads((fixtures_root() / "tokenizer_tiny.json").read_text())
    return spec, TextTokenizer(fixtures_root() / spec["model"])


def test_vocab_size(reference):
    spec, tok = reference
    assert tok.vocab_size == spec["vocab_size"]


def test_encode_matches_reference_ids(reference):
    spec, tok = reference
    for sample in spec["samples"]:
        assert tok.encode(sample["text"]) == sample["ids"]


def test_pieces_display_with_spaces(reference):
    spec, tok = reference
    for sample in spec["samples"]:
        assert [tok.piece(i) for i in sample["ids"]] == [p.replace("\u2581", " ") for p in sample["pieces"]]


def test_padding_ids_and_out_of_vocab_ids_are_not_text(reference):
    spec, tok = reference
    assert tok.piece(spec["special_ids"]["unk"]) is None  # id 0 = EPAD in the LM's text stream
    assert tok.piece(spec["special_ids"]["pad"]) is None  # id 3 = PAD
    assert tok.piece(spec["vocab_size"]) is None  # the text INIT id is input-only
    assert tok.piece(-1) is None


def test_system_prompt_wrapping_follows_reference():
    assert wrap_system_prompt("  You enjoy having a good conversation. ") == "<system> You enjoy having a good conversation. <system>"
    already = "<system> Be brief. <system>"
    assert wrap_system_prompt(already) == already
    assert wrap_system_prompt("<system> only a prefix") == "<system> <system> only a prefix <system>"


def test_encode_system_prompt_encodes_the_whole_wrapped_string(reference):
    spec, tok = reference
    sample = spec["samples"][0]
    inner = sample["text"].removeprefix("<system> ").removesuffix(" <system>")
    assert tok.encode_system_prompt(inner) == sample["ids"]


@pytest.mark.parametrize("prompt", ["", "   ", "<system><system>", "<system>  <system>"])
def test_empty_prompt_is_rejected(prompt):
    with pytest.raises(PPChatError, match="empty"):
        wrap_system_prompt(prompt)


def test_missing_and_corrupt_models(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        TextTokenizer(tmp_path / "absent.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="bad.model is not a SentencePiece model"):
        TextTokenizer(bad)
