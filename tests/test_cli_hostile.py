"""First contact and hostile input at the command line: one clear sentence, the right exit
status, nothing lost (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ppchat.engine.prompts import named_prompt, resolve_prompt
from ppchat.errors import PPChatError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str | bytes, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppchat", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def assert_one_clear_error(proc: subprocess.CompletedProcess, *phrases: str, status: int = 2) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == status, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("ppchat: error: ")]
    assert len(errors) == 1, err
    for phrase in phrases:
        assert phrase in errors[0], err
    return errors[0]


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, np.zeros(4800, np.float32), 24000)
    return path


# --- 16.3 prompt bytes ------------------------------------------------------------------------


def test_prompt_with_invalid_utf8_bytes_is_refused_before_the_model_loads(wav, tmp_path):
    proc = run_cli("respond", "-i", str(wav), "-o", str(tmp_path / "out.wav"), "--model", "demo", "--no-record",
                   "--prompt", b"abc\x80\xff")  # fmt: skip
    assert_one_clear_error(proc, "not UTF-8", "0x80", "--prompt @FILE")
    assert not (tmp_path / "out.wav").exists()


def test_prompt_text_checks():
    with pytest.raises(PPChatError, match="not UTF-8"):
        resolve_prompt("abc\udc80\udcff")
    with pytest.raises(PPChatError, match="not UTF-8"):
        named_prompt("x\udcff")
    assert resolve_prompt("Ünïcode is fine")[1] == "Ünïcode is fine"
