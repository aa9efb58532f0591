"""Write a file so that readers see the old one or the complete new one, never half of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; write it inside the block.

    On a clean exit it atomically replaces `target`; on an exception it is deleted and
    `target` is untouched. The temporary name keeps `target`'s suffix, because some writers
    (`mx.save_safetensors`) add theirs when it is missing.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
