"""Per-user directories follow XDG on Linux and ~/Library on macOS."""

import sys
from pathlib import Path

from ppchat import paths


def test_xdg_variables_are_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    (tmp_path / "r").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "r"))
    assert paths.cache_dir() == tmp_path / "c" / "ppchat"
    assert paths.data_dir() == tmp_path / "d" / "ppchat"
    assert paths.runtime_dir() == tmp_path / "r" / "ppchat"


def test_linux_defaults(monkeypatch, tmp_path):
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.cache_dir() == tmp_path / ".cache/ppchat"
    assert paths.data_dir() == tmp_path / ".local/share/ppchat"


def test_macos_defaults(monkeypatch, tmp_path):
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.cache_dir() == tmp_path / "Library/Caches/ppchat"
    assert paths.data_dir() == tmp_path / "Library/Application Support/ppchat"


def test_relative_xdg_value_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    assert paths.cache_dir() == Path(tmp_path) / ".cache/ppchat"
