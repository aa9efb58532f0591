"""Shared test fixtures: where the reference golden fixtures live, and how to find them."""

from __future__ import annotations

import json
import os

# The parity tests compare float32 math with the float32 reference at ~1e-4 (1e-5 for Mimi's PCM).
# On CUDA, MLX runs float32 matrix products as TF32 by default (10-bit mantissa, ~5e-4 relative per
# product), which would test TF32's rounding, not this code: keep them in full float32. (Set before
# MLX runs anything; the CPU ignores it. `MLX_ENABLE_TF32=1 pytest ...` shows what TF32 changes.)
os.environ.setdefault("MLX_ENABLE_TF32", "0")
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ppchat.errors import AudioError

REPO = Path(__file__).resolve().parents[1]

# The CLI writes its log under XDG_STATE_HOME; tests that run it must not write to the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="ppchat-test-state-")


def fixtures_root() -> Path:
    """`PPCHAT_FIXTURES`, else `../shared/fixtures` beside the repository."""
    env = os.environ.get("PPCHAT_FIXTURES")
    return Path(env) if env else (REPO.parent / "shared" / "fixtures")


def fixture_dirs(kind: str) -> list[Path]:
    """Every checkpoint directory under the fixtures root whose config.json has this `kind`."""
    root = fixtures_root()
    found = []
    if root.is_dir():
        for cfg in sorted(root.rglob("config.json")):
            try:
                if json.loads(cfg.read_text()).get("kind") == kind:
                    found.append(cfg.parent)
            except (OSError, ValueError):
                continue
    return found


def fixture_bundle(root: Path) -> Path:
    """A model folder in the bundle layout at `root` (`lm/`, `mimi/`, `tokenizer.model`), copied
    from the first lm and mimi fixtures, for tests that change its files."""
    lm_dirs, mimi_dirs = fixture_dirs("lm"), fixture_dirs("mimi")
    if not lm_dirs or not mimi_dirs:
        pytest.fail(f"no lm/mimi fixtures under {fixtures_root()}")
    shutil.copytree(lm_dirs[0], root / "lm")
    shutil.copytree(mimi_dirs[0], root / "mimi")
    shutil.copy(fixtures_root() / "tokenizer_tiny.model", root / "tokenizer.model")
    return root


def fixture_params(kind: str):
    dirs = fixture_dirs(kind)
    if not dirs:
        # A missing fixtures tree must be loud, not a silent pass.
        return [pytest.param(None, marks=pytest.mark.xfail(reason=f"no '{kind}' fixtures under {fixtures_root()}", strict=True))]
    return [pytest.param(d, id=d.name) for d in dirs]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    if not root.is_dir():
        pytest.fail(f"fixtures root {root} not found (set PPCHAT_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def pulse_device():
    """The PortAudio device "pulse", backed by the virtual PulseAudio sink."""

    def unavailable(reason: str):
        if os.environ.get("CI"):
            pytest.fail(f"virtual audio device unavailable on CI: {reason}")
        pytest.skip(f"virtual audio device unavailable: {reason}")

    # libpulse (inside PortAudio's ALSA plugin) finds the server through this directory,
    # so it must be in the environment before PortAudio enumerates devices.
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/ppchat-xdg")
    if not (shutil.which("pulseaudio") and shutil.which("pactl")):
        unavailable("pulseaudio/pactl not installed (apt install pulseaudio pulseaudio-utils)")
    try:
        proc = subprocess.run(["bash", str(REPO / "tools" / "virtual-audio.sh")], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        unavailable("tools/virtual-audio.sh timed out")
    if proc.returncode != 0:
        unavailable(f"tools/virtual-audio.sh failed: {proc.stderr.strip() or proc.stdout.strip()}")

    from ppchat.engine.audio_io import resolve_device

    try:
        import sounddevice

        # PortAudio enumerated devices at import, possibly before the server existed. sounddevice
        # has no public call to enumerate again; terminate + initialize is what its author advises.
        sounddevice._terminate()
        sounddevice._initialize()
        return resolve_device("pulse", "input")
    except OSError as exc:  # no libportaudio
        unavailable(f"PortAudio cannot be loaded: {exc}")
    except AudioError as exc:
        unavailable(str(exc))
