"""`user_transcript.json`: the user's words, written by `ppchat transcribe` (optional file).

    {
      "format_version": 1,
      "source": "user.wav",
      "model": "Qwen/Qwen3-ASR-0.6B",
      "language": null,                      # forced language, null = detected
      "created": "2026-12-01T13:02:11.204+00:00",
      "segments": [{"start": 1.24, "end": 2.96, "text": "Hi, how are you?"}, ...]
    }

`start`/`end` are seconds on the session timeline (step `n` starts at `n * 0.08`);
segments are in time order and do not overlap; `text` may be empty where speech was
heard but no words came out. Sessions recorded before this file existed simply have
no user transcript.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from ppchat.sessions.files import atomic_write_bytes

USER_TRANSCRIPT = "user_transcript.json"
FORMAT_VERSION = 1


class UserLine(NamedTuple):
    start: float
    end: float
    text: str


def write_user_transcript(session_dir: Path, segments: Iterable[Any], *, model: str, language: str | None) -> Path:
    """Atomically replace the session's user transcript with `segments` (objects with start, end, text)."""
    doc = {
        "format_version": FORMAT_VERSION,
        "source": "user.wav",
        "model": model,
        "language": language,
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds"),
        "segments": [{"start": float(s.start), "end": float(s.end), "text": str(s.text)} for s in segments],
    }
    path = Path(session_dir) / USER_TRANSCRIPT
    atomic_write_bytes(path, (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    return path


def read_user_transcript(session_dir: Path, warnings: list[str]) -> list[UserLine]:
    """The user's lines, [] when the session has none; damage is reported in `warnings`."""
    path = Path(session_dir) / USER_TRANSCRIPT
    if not path.exists():
        return []
    redo = f"run `ppchat transcribe {Path(session_dir).name}` again"
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        warnings.append(f"{USER_TRANSCRIPT} is unreadable ({exc}); no user transcript: {redo}")
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list):
        warnings.append(f"{USER_TRANSCRIPT} has no segment list; no user transcript: {redo}")
        return []
    if isinstance(doc.get("format_version"), int) and doc["format_version"] > FORMAT_VERSION:
        warnings.append(f"{USER_TRANSCRIPT} uses format {doc['format_version']}; upgrade ppchat to read it")
        return []
    lines, bad = [], 0
    for item in doc["segments"]:
        try:
            line = UserLine(float(item["start"]), float(item["end"]), str(item["text"]))
        except (KeyError, TypeError, ValueError):
            bad += 1
            continue
        if not (0 <= line.start <= line.end):
            bad += 1
            continue
        lines.append(line)
    if bad:
        warnings.append(f"{USER_TRANSCRIPT}: {bad} damaged segment(s) skipped")
    return sorted(lines)
