"""tools/setup.sh prints a few lines of progress and the result, and pip's output only when
pip fails (issue 16.18). pip is stood in for by a fake interpreter, so nothing is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# A venv interpreter whose pip is as noisy as setuptools' deprecation notices make it.
if [ "$1 $2" = "-m pip" ]; then
  for i in $(seq 52); do echo "  BuildBackendWarning: noise line $i" >&2; done
  case "$*" in *"-e "*) exit {status} ;; esac
  exit 0
fi
exit 0  # python -c "import ppchat"
"""


def run_setup(tmp_path: Path, status: int) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(status=status))
    python.chmod(0o755)
    env = {**os.environ, "PPCHAT_VENV": str(venv), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", str(REPO / "tools" / "setup.sh")], capture_output=True, text=True, env=env, timeout=60)


def test_setup_prints_progress_and_the_result_only(tmp_path):
    if subprocess.run(["bash", "-c", "command -v dpkg && ! dpkg -s libportaudio2 libsndfile1"], capture_output=True).returncode == 0:
        pytest.skip("the system packages are missing here: setup.sh would install them with apt-get")
    proc = run_setup(tmp_path, status=0)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0
    assert all(line.startswith("ppchat setup: ") for line in lines) and 1 <= len(lines) <= 4, lines
    assert lines[-1].startswith("ppchat setup: ready")


def test_setup_shows_pips_output_when_pip_fails(tmp_path):
    if subprocess.run(["bash", "-c", "command -v dpkg && ! dpkg -s libportaudio2 libsndfile1"], capture_output=True).returncode == 0:
        pytest.skip("the system packages are missing here: setup.sh would install them with apt-get")
    proc = run_setup(tmp_path, status=1)
    assert proc.returncode == 1
    assert "pip failed" in proc.stdout and "noise line 52" in proc.stderr


def test_the_licence_is_an_spdx_string():
    """A TOML table makes setuptools >= 77 print a deprecation notice on every install."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text and "setuptools>=77" in text
