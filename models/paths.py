"""Per-user directories for ppchat: cache, data and runtime files.

Linux follows the XDG base-directory spec. macOS uses `~/Library/...`, except that an
explicitly set `XDG_*` variable wins there too (many terminal tools honour it, and it
lets tests and users redirect everything with one variable).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "ppchat"


def _is_macos() -> bool:
    return sys.platform == "darwin"


def _xdg(variable: str) -> Path | None:
    # The spec says relative values are invalid and must be ignored.
    value = os.environ.get(variable, "")
    return Path(value) if value and os.path.isabs(value) else None


def cache_dir() -> Path:
    """Re-creatable files (demo model, converted voices, quantised weights)."""
    base = _xdg("XDG_CACHE_HOME")
    if base is None:
        base = Path.home() / ("Library/Caches" if _is_macos() else ".cache")
    return base / APP_NAME


def data_dir() -> Path:
    """Files the user would miss if deleted (recorded sessions, custom voices)."""
    base = _xdg("XDG_DATA_HOME")
    if base is None:
        base = Path.home() / ("Library/Application Support" if _is_macos() else ".local/share")
    return base / APP_NAME


def runtime_dir() -> Path:
    """Short-lived files such as sockets and lock files.

    `XDG_RUNTIME_DIR` is per-user and cleaned at logout; without it (macOS, containers)
    a `run/` folder in the cache directory serves the same purpose.
    """
    base = _xdg("XDG_RUNTIME_DIR")
    return base / APP_NAME if base is not None else cache_dir() / "run"
