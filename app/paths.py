"""Per-user directories for ppchat: cache, data, state (the log) and runtime files.

Linux follows the XDG base-directory spec. macOS uses `~/Library/...`, except that an
explicitly set `XDG_*` variable wins there too (many terminal tools honour it, and it
lets tests and users redirect everything with one variable).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

from ppchat.errors import PPChatError

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


def state_dir() -> Path:
    """Files worth keeping across runs but not backing up: the log."""
    base = _xdg("XDG_STATE_HOME")
    if base is None:
        base = Path.home() / ("Library/Logs" if _is_macos() else ".local/state")
    return base / APP_NAME


def log_file() -> Path:
    return state_dir() / "ppchat.log"


def runtime_dir() -> Path:
    """The per-user private directory for sockets, created 0700 if missing.

    `$XDG_RUNTIME_DIR/ppchat`, else `<tmp>/ppchat-<uid>` (not under the cache: a Unix
    socket path must stay under ~100 bytes). Refuses a directory someone else owns.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    # The XDG spec says a relative value is invalid and must be ignored.
    usable = xdg and os.path.isabs(xdg) and os.path.isdir(xdg)
    base = Path(xdg) / APP_NAME if usable else Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, parents=False, exist_ok=True)
        st = base.lstat()
    except OSError as exc:
        raise PPChatError(
            f"cannot create the runtime directory {base}: {exc.strerror}; set XDG_RUNTIME_DIR to a writable directory"
        ) from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PPChatError(f"{base} is not a directory owned by you; remove it or set XDG_RUNTIME_DIR")
    if st.st_mode & 0o077:
        os.chmod(base, 0o700)
    return base
