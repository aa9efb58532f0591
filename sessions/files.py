"""Durable file primitives for recordings: append-only files and atomic replacement.

Every write error (disk full, quota, read-only file system, permissions, a vanished
directory) becomes `RecordingStopped`, a `SessionError`, so callers handle one type.
Writes go through `os.pwrite`/`os.fsync` on raw descriptors: there is no hidden buffer
whose contents could be lost or written out of order.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ppchat import atomic
from ppchat.errors import SessionError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is too large for this file system",
    errno.EEXIST: "it already exists",
    errno.ENOENT: "its directory does not exist",
    errno.ENOTDIR: "a path component is not a directory",
}


class RecordingStopped(SessionError):
    """Writing can't go on. Everything committed before the error is still intact on disk."""


def describe_write_error(exc: OSError, path: Path) -> str:
    """A one-line, user-facing description of a failed write to `path`."""
    reason = _REASONS.get(exc.errno) or exc.strerror or str(exc)
    return f"cannot write {path}: {reason}"


class AppendOnlyFile:
    """A new file that only grows, with a committed length.

    `write` appends; `patch` overwrites bytes that were already written (a header);
    `sync` fsyncs and marks everything so far as committed. If any of them fails, the
    file is cut back to the committed length, so half-written bytes never follow
    good data, and `RecordingStopped` is raised. The file must not exist yet: a
    recording never overwrites anything.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise RecordingStopped(describe_write_error(exc, self.path)) from exc
        self.length = 0
        self.committed = 0

    def write(self, data: bytes) -> None:
        self._guard(self._pwrite_all, data, self.length)
        self.length += len(data)

    def patch(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.length:
            raise ValueError("patch must overwrite bytes that were already written")
        self._guard(self._pwrite_all, data, offset)

    def sync(self) -> None:
        self._guard(os.fsync, self._fd)
        self.committed = self.length

    def cut(self, length: int) -> None:
        """Shorten the file to `length` bytes (at most the committed length) and make that durable."""
        length = min(length, self.committed)
        self._guard(os.ftruncate, self._fd, length)
        self.length = self.committed = length
        self.sync()

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass  # nothing left to save: every byte we care about was fsynced

    def _pwrite_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def _guard(self, func, *args) -> None:
        try:
            func(*args)
        except OSError as exc:
            self._roll_back()
            raise RecordingStopped(describe_write_error(exc, self.path)) from exc

    def _roll_back(self) -> None:
        try:
            os.ftruncate(self._fd, self.committed)
        except OSError:
            pass  # the uncommitted tail stays; the header/last-line checks on load ignore it
        self.length = self.committed


class BufferedAppender:
    """Buffers bytes in memory; `flush` appends them durably; `abandon` drops them.

    Subclasses add typed `append` methods and may extend `_write_durably` (a WAV
    header patch between the append and the fsync).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._pending: list[bytes] = []
        self._file = AppendOnlyFile(self.path)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._write_durably(data)

    def _write_durably(self, data: bytes) -> None:
        self._file.write(data)
        self._file.sync()

    def close(self) -> None:
        """Flush what is buffered and close. The file is closed even if the flush fails."""
        try:
            self.flush()
        finally:
            self._file.close()

    @property
    def committed(self) -> int:
        """Bytes durably on disk."""
        return self._file.committed

    def cut(self, length: int) -> None:
        """Drop what is buffered and shorten the file to `length` committed bytes (a common end with
        other files after a failed write). Raises `RecordingStopped`."""
        self._pending.clear()
        self._file.cut(length)

    def abandon(self) -> None:
        """Close without writing what is buffered (after an error elsewhere stopped the recording)."""
        self._pending.clear()
        self._file.close()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` durably (`ppchat.atomic`); a failure stops the recording, clearly."""
    try:
        atomic.write_bytes(path, data)
    except OSError as exc:
        raise RecordingStopped(describe_write_error(exc, Path(path))) from exc
