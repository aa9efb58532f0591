"""ppchat.atomic: the one way ppchat replaces a file."""

from __future__ import annotations

import os

import pytest

from ppchat.atomic import replacing, write_bytes


def test_a_clean_block_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".out.json.{os.getpid()}.tmp"
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers still see the old file while it is written
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failed_block_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"precious")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_keep_suffix_for_writers_that_add_their_own(tmp_path):
    with replacing(tmp_path / "lm-q4.safetensors", keep_suffix=True) as tmp:
        assert tmp.name.endswith(".tmp.safetensors") and tmp.name.startswith(".lm-q4.safetensors.")
        tmp.write_bytes(b"x")
    assert (tmp_path / "lm-q4.safetensors").read_bytes() == b"x"


def test_write_bytes_durably_and_its_errors_are_os_errors(tmp_path):
    target = tmp_path / "session.json"
    write_bytes(target, b"one")
    write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["session.json"]
    with pytest.raises(FileNotFoundError):
        write_bytes(tmp_path / "missing" / "session.json", b"x")
