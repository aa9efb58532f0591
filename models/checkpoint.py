"""Reading and checking checkpoint files and directories.

Every failure here is turned into a `CheckpointError` that names the file and says what
to do, because a truncated download or a wrong directory is the most common way a first
start goes wrong.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from ppchat.errors import CheckpointError
from ppchat.models import manifest

REDOWNLOAD_HINT = "re-run `ppchat download` to fetch it again"

# safetensors dtype tag → bytes per element
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as described by a safetensors header."""

    dtype: str
    shape: tuple[int, ...]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _corrupt(path: Path, why: str, hint: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {path} is unusable ({why}); {hint}")


def read_safetensors_header(path: str | Path, hint: str = REDOWNLOAD_HINT) -> dict[str, TensorInfo]:
    """Key → dtype and shape from a safetensors header, checking the file is complete.

    Reads only the header, so a 16 GB checkpoint can be checked in milliseconds.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise _corrupt(path, "file is empty or truncated", hint)
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise _corrupt(path, "not a safetensors file or truncated header", hint)
            header = json.loads(f.read(header_len))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist; {hint}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "header is not valid JSON", hint) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object", hint)

    data_size = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = _SAFETENSORS_ITEMSIZE[dtype]
            if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
                raise ValueError(f"'shape' should be a list of whole numbers, not {shape!r}"[:120])
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
                raise ValueError(f"'data_offsets' should be two whole numbers, not {offsets!r}"[:120])
            shape, (begin, end) = tuple(shape), offsets
            if begin > end:
                raise ValueError(f"'data_offsets' {offsets} run backwards")
        except (KeyError, TypeError) as exc:
            raise _corrupt(path, f"malformed header entry for '{key}' ({type(exc).__name__}: {exc})", hint) from None
        except ValueError as exc:
            raise _corrupt(path, f"malformed header entry for '{key}': {exc}", hint) from None
        numel = 1
        for d in shape:
            numel *= d
        if end > data_size:
            raise _corrupt(path, f"tensor '{key}' lies beyond the end of the file: incomplete download", hint)
        if end - begin != numel * itemsize:
            raise _corrupt(path, f"tensor '{key}' has a byte size that does not match its shape", hint)
        tensors[key] = TensorInfo(dtype, shape)
    return tensors


def read_safetensors(path: str | Path, hint: str = REDOWNLOAD_HINT) -> dict[str, mx.array]:
    """Load every tensor of a safetensors file as MLX arrays, or raise CheckpointError."""
    read_safetensors_header(path, hint)
    try:
        return mx.load(str(path), format="safetensors")
    except (RuntimeError, ValueError, OSError) as exc:
        raise _corrupt(Path(path), str(exc), hint) from None


def validate(weights_or_shapes: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], source: str = "checkpoint") -> None:
    """Check a key set against the expected reference key → shape set.

    `weights_or_shapes` maps keys to arrays, `TensorInfo`s or shape tuples. Raises a
    CheckpointError listing missing keys, unexpected keys and shape mismatches.
    """
    problems = manifest.shape_problems(weights_or_shapes, expected)
    if problems:
        hint = "it does not match the model configuration; use the matching config or re-download it"
        raise CheckpointError(f"{source}: {'; '.join(problems)}; {hint}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise CheckpointError(f"{path} is not valid JSON; restore or regenerate it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def open_component_dir(path: str | Path, kind: str | None = None) -> tuple[dict[str, Any], Path]:
    """Open a fixture-format directory: `config.json` (with `kind`) + `weights.safetensors`.

    Returns the parsed config and the weights path. With `kind` given, a directory of
    another kind is refused.
    """
    path = Path(path)
    cfg_path, weights = path / "config.json", path / "weights.safetensors"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} is not a model directory: config.json is missing")
    config = _read_json(cfg_path)
    found = config.get("kind")
    if found not in ("lm", "mimi"):
        raise CheckpointError(f"{cfg_path}: 'kind' must be 'lm' or 'mimi', not {found!r}")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} holds a '{found}' model where a '{kind}' model was expected")
    if found == "lm" and not isinstance(config.get("lm_kwargs"), dict):
        raise CheckpointError(f"{cfg_path}: an 'lm' config needs an 'lm_kwargs' object")
    try:
        manifest.check_lm_kwargs(config["lm_kwargs"]) if found == "lm" else manifest.check_mimi_config(config)
    except CheckpointError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}; use the config.json that came with the weights") from None
    if not weights.is_file():
        raise CheckpointError(f"{path}: weights.safetensors is missing; regenerate or re-download the model")
    return config, weights


@dataclass(frozen=True)
class CheckpointDir:
    """Everything needed to build a model, independent of the directory's layout.

    `lm_config` / `mimi_config` are in config.json layout (`lm_config["lm_kwargs"]`,
    `mimi_config["seanet"]`, ...). `voices_archive` is a not yet extracted voices.tgz.
    """

    root: Path
    layout: str  # "hub" (real model snapshot) or "bundle" (lm/ + mimi/ component dirs)
    lm_config: dict[str, Any]
    mimi_config: dict[str, Any]
    lm_weights_path: Path
    mimi_weights_path: Path
    tokenizer_path: Path
    voices_dir: Path | None
    voices_archive: Path | None
    is_demo: bool

    def validate_weights(self) -> None:
        """Check both weight files' headers against the configs (no tensor is loaded)."""
        lm_kwargs, lm_header = self.lm_config["lm_kwargs"], read_safetensors_header(self.lm_weights_path)
        lm_shapes = manifest.lm_reference_shapes(lm_kwargs)  # checks the config first
        manifest.refuse_short_depformer(lm_header, lm_kwargs, str(self.lm_weights_path))
        validate(lm_header, lm_shapes, source=str(self.lm_weights_path))
        validate(
            manifest.weight_norm_folded(read_safetensors_header(self.mimi_weights_path)),  # as Mimi loads it
            manifest.mimi_reference_shapes(self.mimi_config),
            source=str(self.mimi_weights_path),
        )


DEMO_MARKER = "DEMO"


def _open_hub_snapshot(root: Path) -> CheckpointDir:
    tokenizer = root / manifest.TOKENIZER_FILE
    if not tokenizer.is_file():
        raise CheckpointError(f"{root}: {manifest.TOKENIZER_FILE} is missing; {REDOWNLOAD_HINT}")
    voices = root / "voices"
    archive = root / manifest.VOICES_ARCHIVE
    return CheckpointDir(
        root=root,
        layout="hub",
        lm_config=manifest.personaplex_lm_config(),
        mimi_config=manifest.personaplex_mimi_config(),
        lm_weights_path=root / manifest.LM_FILE,
        mimi_weights_path=root / manifest.MIMI_FILE,
        tokenizer_path=tokenizer,
        voices_dir=voices if voices.is_dir() else None,
        voices_archive=archive if archive.is_file() else None,
        is_demo=False,
    )


def _find_component(root: Path, kind: str) -> Path:
    preferred = root / kind
    if (preferred / "config.json").is_file():
        return preferred
    found = []
    for cfg in sorted(root.glob("*/config.json")):
        try:
            if json.loads(cfg.read_text()).get("kind") == kind:
                found.append(cfg.parent)
        except (OSError, ValueError):
            continue
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ambiguous ({', '.join(p.name for p in found)})"
        raise CheckpointError(
            f"{root} is not a model directory: {what} '{kind}' component folder(s); expected either the "
            f"Hugging Face files ({manifest.LM_FILE}, {manifest.MIMI_FILE}) or lm/ and mimi/ folders"
        )
    return found[0]


def _find_tokenizer(root: Path) -> Path:
    preferred = root / "tokenizer.model"
    if preferred.is_file():
        return preferred
    candidates = sorted(root.glob("*.model"))
    if len(candidates) != 1:
        raise CheckpointError(f"{root}: expected one SentencePiece tokenizer (tokenizer.model), found {len(candidates)}")
    return candidates[0]


def open_checkpoint_dir(path: str | Path) -> CheckpointDir:
    """Recognise a model directory and describe its parts.

    Accepted layouts:
    * a Hugging Face snapshot of `nvidia/personaplex-7b-v1` (`model.safetensors`, the Mimi
      file, the SentencePiece model, `voices/` or `voices.tgz`); configs are the 7B constants;
    * a bundle: one `lm` and one `mimi` fixture-format folder (found by their `kind`),
      a SentencePiece `*.model`, optionally `voices/` and a `DEMO` marker.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise CheckpointError(f"model directory {root} {what}; pass a downloaded model folder or 'demo'")
    if (root / manifest.LM_FILE).is_file() or (root / manifest.MIMI_FILE).is_file():
        for name in (manifest.LM_FILE, manifest.MIMI_FILE):
            if not (root / name).is_file():
                raise CheckpointError(f"{root}: {name} is missing; {REDOWNLOAD_HINT}")
        return _open_hub_snapshot(root)

    lm_config, lm_weights = open_component_dir(_find_component(root, "lm"), "lm")
    mimi_config, mimi_weights = open_component_dir(_find_component(root, "mimi"), "mimi")
    voices = root / "voices"
    return CheckpointDir(
        root=root,
        layout="bundle",
        lm_config=lm_config,
        mimi_config=mimi_config,
        lm_weights_path=lm_weights,
        mimi_weights_path=mimi_weights,
        tokenizer_path=_find_tokenizer(root),
        voices_dir=voices if voices.is_dir() else None,
        voices_archive=None,
        is_demo=(root / DEMO_MARKER).is_file(),
    )
