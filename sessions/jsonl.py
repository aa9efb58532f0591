"""Append-only JSON Lines: one compact JSON object per line, UTF-8.

The writer buffers lines and appends them in `flush` (then fsyncs), like `WavWriter`.
A crash can leave only the last line torn (no newline at the end); the reader returns
every complete line and says whether a torn tail follows, and where it starts, so
`repair` can cut it off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppchat.errors import SessionError
from ppchat.sessions.files import BufferedAppender


class JsonlWriter(BufferedAppender):
    """Appends JSON objects to a new file; `flush` makes them durable. Errors raise `RecordingStopped`."""

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._pending.append(line.encode("utf-8"))


@dataclass
class JsonlContents:
    """What `read_jsonl` found."""

    records: list[dict[str, Any]]
    complete_bytes: int  # file length up to and including the last newline
    torn: bool  # bytes after the last newline: a line cut short by a crash
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of complete lines that aren't JSON objects


def read_jsonl(path: Path) -> JsonlContents:
    """Every complete line of `path` that is a JSON object. Raises `SessionError` if unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    complete_bytes = data.rfind(b"\n") + 1
    records, bad = [], []
    for number, line in enumerate(data[:complete_bytes].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # includes UnicodeDecodeError
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    return JsonlContents(records, complete_bytes, torn=complete_bytes < len(data), bad_lines=bad)
