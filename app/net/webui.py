"""Where `ppchat serve` finds NVIDIA's web UI: the model repo's dist.tgz, unpacked once."""

from __future__ import annotations

import logging
from pathlib import Path

from ppchat import paths
from ppchat.errors import PPChatError
from ppchat.models import hub

log = logging.getLogger(__name__)


def find_web_ui(cache_root: Path | None = None) -> Path | None:
    """The unpacked web UI folder when dist.tgz is in the hub cache, else None (never downloads)."""
    archive = hub.download_web_ui(offline=True)
    if archive is None:
        return None
    # One folder per hub snapshot, so a newer download is unpacked afresh.
    parent = (cache_root or paths.cache_dir()) / "webui" / archive.parent.name
    try:
        folder = hub.extract_web_ui(archive, parent)
    except PPChatError as exc:
        log.warning("not serving the web UI: %s", exc)
        return None
    return folder if (folder / "index.html").is_file() else None
