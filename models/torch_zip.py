"""A torch-free, code-execution-free reader for `torch.save` files (zip format, torch ≥ 1.6).

Layout: a zip whose entries share one prefix folder: `<prefix>/data.pkl` (a pickle of the
saved object in which tensors are `_rebuild_tensor_v2(storage, offset, size, stride, ...)`
calls and storages are persistent ids `("storage", <Type>Storage, key, location, numel)`),
`<prefix>/data/<key>` (raw storage bytes) and `<prefix>/byteorder`.

The pickle is read by an `Unpickler` whose `find_class` hands out only local, side-effect
free stand-ins for the few globals torch uses for plain tensors; any other global
(`os.system`, `builtins.eval`, ...) aborts with CheckpointError before it can run.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ppchat.errors import CheckpointError


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.<Name>Storage`: only remembers the element type."""

    numpy_dtype: np.dtype
    bfloat16: bool = False  # numpy has no bf16: read raw uint16 bits, reinterpret in MLX


_STORAGE_TYPES = {
    "FloatStorage": _StorageType(np.dtype(np.float32)),
    "HalfStorage": _StorageType(np.dtype(np.float16)),
    "BFloat16Storage": _StorageType(np.dtype(np.uint16), bfloat16=True),
    "LongStorage": _StorageType(np.dtype(np.int64)),
    "IntStorage": _StorageType(np.dtype(np.int32)),
    "ShortStorage": _StorageType(np.dtype(np.int16)),
    "CharStorage": _StorageType(np.dtype(np.int8)),
    "ByteStorage": _StorageType(np.dtype(np.uint8)),
    "BoolStorage": _StorageType(np.dtype(np.bool_)),
}


@dataclass(frozen=True)
class _Storage:
    """A storage resolved from its persistent id: raw elements in file byte order."""

    kind: _StorageType
    data: np.ndarray  # 1-D, numpy_dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Safe stand-in for `torch._utils._rebuild_tensor_v2`: a strided view → mx.array."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise pickle.UnpicklingError("tensor with invalid size/stride/offset")
    # Highest element touched must lie inside the storage, or as_strided would read garbage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.data.size:
        raise pickle.UnpicklingError("tensor view reaches past the end of its storage")
    flat = storage.data
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=tuple(s * item for s in stride))
    array = mx.array(np.ascontiguousarray(view))
    return array.view(mx.bfloat16) if storage.kind.bfloat16 else array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Safe stand-in for `torch._utils._rebuild_parameter`: a Parameter is just its data here."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): kind for name, kind in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: _StorageReader):
        super().__init__(io.BytesIO(data))
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        return self._storages.get(str(key), kind, int(numel))


class _StorageReader:
    """Reads `<prefix>/data/<key>` once per key, checking its size against the pickle."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._cache: dict[str, _Storage] = {}

    def get(self, key: str, kind: _StorageType, numel: int) -> _Storage:
        if key not in self._cache:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage entry '{name}' is missing") from None
            if len(raw) < numel * kind.numpy_dtype.itemsize:
                raise pickle.UnpicklingError(f"storage '{name}' is shorter than its {numel} elements")
            dtype = kind.numpy_dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            data = np.frombuffer(raw, dtype=dtype, count=numel).astype(kind.numpy_dtype)
            self._cache[key] = _Storage(kind, data)
        return self._cache[key]


def load_torch_zip(path: str | Path) -> Any:
    """Load a `torch.save` zip file; tensors come back as `mx.array`, containers as-is.

    Raises CheckpointError for a missing, truncated, non-zip or unsafe file.
    """
    path = Path(path)
    hint = "restore the file (for the official voices, re-run `ppchat download`)"
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{path} is not a torch checkpoint (no data.pkl); {hint}")
            prefix = pickles[0][: -len("data.pkl")]
            try:
                byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            except KeyError:
                byteorder = "little"  # files from torch < 1.9 have no byteorder entry and are little-endian
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byte order {byteorder!r}; {hint}")
            unpickler = _RestrictedUnpickler(archive.read(pickles[0]), _StorageReader(archive, prefix, byteorder))
            return unpickler.load()
    except FileNotFoundError:
        raise CheckpointError(f"torch file {path} does not exist") from None
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path} is not a zip-format torch file (truncated download, or a legacy pre-1.6 torch file); {hint}"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{path} cannot be read safely ({exc}); {hint}") from None
    except (OSError, zipfile.LargeZipFile) as exc:
        raise CheckpointError(f"cannot read torch file {path}: {exc}") from None
