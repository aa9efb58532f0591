"""Write a file so that readers see the old one or the complete new one, never half of it.

The one helper for it: model caches, converted voices, `respond` outputs, session.json,
exports. Temporary files are named `.NAME.PID.tmp` beside the target (a session folder's
listing skips and cleans names of that shape).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def replacing(target: str | Path, *, durable: bool = False, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; write it inside the block.

    On a clean exit it atomically replaces `target`; on an exception it is deleted and
    `target` is untouched. `durable` also fsyncs the file before the rename and the folder
    after it, so that the new file survives a power cut (session files). `keep_suffix` ends
    the temporary name with `target`'s suffix, for writers that add theirs when it is missing
    (`mx.save_safetensors`).
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp" + (target.suffix if keep_suffix else ""))
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
    finally:
        with suppress(OSError):
            tmp.unlink()
    if durable:
        _fsync_folder(target.parent)


def write_bytes(target: str | Path, data: bytes) -> None:
    """Replace `target` with `data`, durably (see `replacing`)."""
    with replacing(target, durable=True) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(directory: Path) -> None:
    # Makes the rename itself durable on Linux; some platforms can't open or fsync folders.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
