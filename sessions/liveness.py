"""Is a session whose `session.json` says "recording" really still being recorded?

A recording process that died (crash, `kill -9`, power loss) leaves status "recording"
behind. Its pid tells: if that process is gone, the session needs `repair`. Within
this process a pid check can't tell a running `Recorder` from one that ended without
finalising, so recorders register the directories they are writing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_recording_here: set[Path] = set()
_lock = threading.Lock()


def mark_recording(session_dir: Path) -> None:
    with _lock:
        _recording_here.add(Path(session_dir).resolve())


def unmark_recording(session_dir: Path) -> None:
    with _lock:
        _recording_here.discard(Path(session_dir).resolve())


def is_recording_live(session_dir: Path, pid: int | None) -> bool:
    """True if process `pid` may still be writing `session_dir`."""
    if pid is None or pid <= 0:  # 0 and negatives would address process groups
        return False
    if pid == os.getpid():
        with _lock:
            return Path(session_dir).resolve() in _recording_here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    except (OverflowError, ValueError, OSError):
        return False  # not a valid pid
    return True
