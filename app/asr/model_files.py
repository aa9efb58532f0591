"""Where the Qwen3-ASR weights come from: a local folder, or a Hugging Face repo in the cache.

Nothing here goes online except `download`. Finding the model never downloads it: a
missing model is an `AsrModelMissing` error that says how to get it, so every other
part of ppchat works without it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ppchat.errors import CheckpointError

DEFAULT_ASR_MODEL = "Qwen/Qwen3-ASR-0.6B"
# What mlx-qwen3-asr reads from a model folder (its own loader fetches the same patterns).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
_NEEDED = ("config.json", "vocab.json", "merges.txt")

ASR_MODEL_HELP = (
    f"Qwen3-ASR model: a Hugging Face repo id (default {DEFAULT_ASR_MODEL}; also Qwen/Qwen3-ASR-1.7B "
    "or a 4/8-bit MLX conversion) or a local folder with config.json, *.safetensors, vocab.json and merges.txt"
)


class AsrModelMissing(CheckpointError):
    """The ASR weights are not on this machine."""


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists() or spec.count("/") != 1


def resolve_asr_model(spec: str | None = None) -> Path:
    """The local folder of `spec` (a folder, or a repo id already in the hub cache)."""
    spec = spec or DEFAULT_ASR_MODEL
    if _looks_like_path(spec):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise AsrModelMissing(f"ASR model folder {folder} does not exist; pass --asr-model with a folder or a repo id")
    else:
        folder = _cached_snapshot(spec)
    check_asr_folder(folder)
    return folder


def _cached_snapshot(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        flag = "" if repo_id == DEFAULT_ASR_MODEL else f" --asr-model {repo_id}"
        raise AsrModelMissing(
            f"the ASR model {repo_id} is not downloaded; run `ppchat download --asr{flag}` "
            "or pass --asr-model with a local folder"
        ) from exc


def check_asr_folder(folder: Path) -> None:
    """Refuse a folder mlx-qwen3-asr could not load, naming what is wrong."""
    missing = [name for name in _NEEDED if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise AsrModelMissing(
            f"ASR model folder {folder} lacks {', '.join(missing)}; download it again with `ppchat download --asr`"
        )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not readable JSON ({exc}); download the ASR model again") from exc
    if not isinstance(config, dict) or not ("thinker_config" in config or "audio_config" in config):
        raise CheckpointError(f"{folder / 'config.json'} is not a Qwen3-ASR config (no thinker_config or audio_config)")


def download(repo_id: str | None = None, revision: str | None = None) -> Path:
    """Fetch the ASR model into the Hugging Face cache (files already there are kept)."""
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    repo_id = repo_id or DEFAULT_ASR_MODEL
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"there is no Hugging Face repo {repo_id}; check --asr-model") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"downloading {repo_id} failed ({exc}); check your connection and retry") from exc
    check_asr_folder(folder)
    return folder
