"""Fetching the real PersonaPlex checkpoint from the Hugging Face hub, and unpacking its voices.

The repository is gated, so most first-run failures are licence or token problems; they
are turned into CheckpointErrors that say exactly what to do. Files already in the local
hub cache are used without touching the network.
"""

from __future__ import annotations

import os
import shutil
import socket
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path, PurePosixPath

import huggingface_hub
import huggingface_hub.constants
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ppchat.constants import REPO_ID
from ppchat.errors import CheckpointError
from ppchat.models import manifest

try:  # the HTTP client's own base error (httpx in recent hub versions; requests' is an OSError)
    from huggingface_hub.errors import HTTPError as _TransportError
except ImportError:  # huggingface_hub < 0.23
    _TransportError = OSError


def _licence_help(repo_id: str) -> str:
    return (
        f"accept the licence at https://huggingface.co/{repo_id} and export HF_TOKEN=<a read token "
        "from https://huggingface.co/settings/tokens>"
    )


def _to_checkpoint_error(exc: Exception, repo_id: str, filename: str, token_set: bool) -> CheckpointError:
    """Map a hub exception to a message that tells the user what to do next."""
    if isinstance(exc, GatedRepoError):
        who = "your HF_TOKEN has not been granted access" if token_set else "no HF_TOKEN is set"
        return CheckpointError(f"{repo_id} is a gated model and {who}: {_licence_help(repo_id)}")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(
            f"repository {repo_id} was not found or needs authentication: check the name, then {_licence_help(repo_id)}"
        )
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"the requested revision of {repo_id} does not exist; drop --revision or fix it")
    if isinstance(exc, LocalEntryNotFoundError):
        offline = " (HF_HUB_OFFLINE is set: unset it)" if huggingface_hub.constants.HF_HUB_OFFLINE else ""
        return CheckpointError(
            f"cannot reach huggingface.co and {filename} of {repo_id} is not in the local cache; "
            f"connect to the internet{offline} and retry, or pass a local model directory"
        )
    if isinstance(exc, EntryNotFoundError):
        return CheckpointError(f"{filename} is not in {repo_id}; is this a PersonaPlex repository?")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return CheckpointError(f"huggingface.co refused access to {repo_id} (HTTP {status}): {_licence_help(repo_id)}")
        return CheckpointError(f"downloading {filename} from {repo_id} failed (HTTP {status}); retry later")
    if isinstance(exc, OSError) and not isinstance(exc, _TransportError):
        return CheckpointError(f"cannot write {filename} to the Hugging Face cache ({exc}); free disk space or set HF_HOME")
    return CheckpointError(f"downloading {filename} from {repo_id} failed ({exc}); check your connection and retry")


PROBE_SECONDS = 4.0  # how long the reachability check may take, DNS included


def _reachability_problem() -> str | None:
    """None if the hub (or the HTTPS proxy) accepts a TCP connection within `PROBE_SECONDS`,
    else why not. Checked before a download so that a machine without network gets one
    message in seconds instead of the hub client's retries."""
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or huggingface_hub.constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    where = f"the proxy {host}:{port}" if proxy else host
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{where} cannot be reached ({exc.strerror or exc})")

    thread = threading.Thread(target=probe, name="ppchat-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return outcome[0] if outcome else f"{where} did not answer within {PROBE_SECONDS:.0f} s"


def _preflight(repo_id: str, token: str | None) -> None:
    """Before downloading: a token and a reachable hub, or one message with the fix for each."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise CheckpointError(
            f"{repo_id} is not (completely) in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "unset HF_HUB_OFFLINE to download it, or pass a local model folder with --model DIR"
        )
    problems, fixes = [], []
    if not (token or huggingface_hub.get_token()):
        problems.append("no HF_TOKEN is set")
        fixes.append(
            f"accept the licence at https://huggingface.co/{repo_id}, create a read token at "
            "https://huggingface.co/settings/tokens, then `export HF_TOKEN=hf_...`"
        )
    unreachable = _reachability_problem()
    if unreachable:
        problems.append(unreachable)
        fixes.append("connect this machine to the internet (or set HTTPS_PROXY), or download the model "
                     "elsewhere and pass its folder with --model DIR")  # fmt: skip
    if problems:
        steps = "; ".join(f"({i}) {fix}" for i, fix in enumerate(fixes, start=1))
        raise CheckpointError(
            f"cannot download {repo_id}: {' and '.join(problems)}. To fix: {steps}; then run `ppchat download` again"
        )


def _fetch_all(repo_id: str, revision: str | None, token: str | None, cache_dir: Path | None, local_only: bool) -> Path:
    paths = []
    for filename in manifest.HUB_FILES:
        try:
            path = huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_only,
            )
        except (EntryNotFoundError, HfHubHTTPError, _TransportError, OSError) as exc:
            token_set = bool(token or os.environ.get("HF_TOKEN"))
            raise _to_checkpoint_error(exc, repo_id, filename, token_set) from exc
        paths.append(Path(path))
    snapshot = paths[0].parent
    if any(p.parent != snapshot for p in paths):
        raise CheckpointError(f"the files of {repo_id} ended up in different cache snapshots; retry the download")
    return snapshot


def download_model(
    repo_id: str = REPO_ID,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
) -> Path:
    """Return the snapshot directory holding all PersonaPlex files, downloading what is missing.

    A complete cached copy is used without any network access; otherwise the files are
    downloaded with the hub's progress bars (`HF_TOKEN` is picked up by huggingface_hub).
    With `offline=True` only the cache is consulted.
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    try:
        return _fetch_all(repo_id, revision, token, cache, local_only=True)
    except CheckpointError:
        if offline:
            raise
    _preflight(repo_id, token)
    return _fetch_all(repo_id, revision, token, cache, local_only=False)


def _safe_members(archive: tarfile.TarFile, source: Path) -> list[tarfile.TarInfo]:
    """Regular files and folders with relative, non-escaping paths; anything else is refused."""
    members = []
    for member in archive.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or "\\" in member.name:
            raise CheckpointError(f"{source} contains an unsafe path '{member.name}'; not extracting it")
        if not (member.isfile() or member.isdir()):
            raise CheckpointError(f"{source} contains a link or special file '{member.name}'; not extracting it")
        members.append(member)
    return members


WEB_UI_ARCHIVE = "dist.tgz"  # NVIDIA's web UI, built, in the model repo (the reference server serves it)


def download_web_ui(repo_id: str = REPO_ID, *, revision: str | None = None, offline: bool = False) -> Path | None:
    """The web UI archive from the model repo (cache first), or None where it cannot be had.

    It is optional: the console and `ppchat serve` work without it."""
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, WEB_UI_ARCHIVE, revision=revision, local_files_only=offline))
    except (EntryNotFoundError, HfHubHTTPError, _TransportError, OSError, ValueError):
        return None


def extract_voices(archive_path: str | Path, dest_parent: str | Path) -> Path:
    """Unpack a voices.tgz into `dest_parent/voices/` (once) and return that folder.

    The archive holds a top-level `voices/` folder; a flat archive is accepted too.
    Extraction goes to a temporary folder renamed into place, so an interrupted run never
    leaves a half-filled `voices/` that would be mistaken for a complete one.
    """
    return _extract_folder(archive_path, dest_parent, "voices")


def extract_web_ui(archive_path: str | Path, dest_parent: str | Path) -> Path:
    """Unpack the web UI's dist.tgz into `dest_parent/dist/` (once), like `extract_voices`."""
    return _extract_folder(archive_path, dest_parent, "dist")


def _extract_folder(archive_path: str | Path, dest_parent: str | Path, folder: str) -> Path:
    source, parent = Path(archive_path), Path(dest_parent)
    target = parent / folder
    if target.is_dir():
        return target
    staging: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder}-"))
        with tarfile.open(source, "r:*") as archive:
            for member in _safe_members(archive, source):
                member_path = staging.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    member_path.mkdir(parents=True, exist_ok=True)
                    continue
                member_path.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as src, member_path.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        inner = staging / folder
        os.replace(inner if inner.is_dir() else staging, target)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{source} is corrupt ({exc}); re-run `ppchat download`") from None
    except OSError as exc:
        raise CheckpointError(f"cannot unpack {source} into {parent}: {exc}") from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
