"""The torch-free .pt reader: real torch output, hand-built files, and malicious pickles."""

import pickle
import struct
import zipfile

import mlx.core as mx
import numpy as np
import pytest

from ppchat.errors import CheckpointError
from ppchat.models.torch_zip import load_torch_zip
from tests.conftest import fixture_params

# --- a minimal writer of the torch zip format, from pickle opcodes (no torch, no pickling of objects)


def _str(s: str) -> bytes:
    raw = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    return pickle.BININT + struct.pack("<i", i)


def _tuple(items) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tensor(storage_type: str, key: str, numel: int, offset: int, size, stride) -> bytes:
    """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` as torch writes it."""
    pid = _tuple([_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel)])
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    args = _tuple([pid + pickle.BINPERSID, _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)), pickle.NEWFALSE, hooks])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def _dict(entries: dict) -> bytes:
    items = b"".join(_str(k) + v for k, v in entries.items())
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS + pickle.STOP


def _write_pt(path, pkl: bytes, storages: dict, byteorder=b"little"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


# --- real torch output -------------------------------------------------------------------------


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_reads_voice_pt_written_by_torch(voice_dir):
    loaded = load_torch_zip(voice_dir / "VOICE.pt")
    expected = mx.load(str(voice_dir / "io.safetensors"))
    assert set(loaded) == {"embeddings", "cache"}
    assert loaded["embeddings"].dtype == mx.float32 and loaded["cache"].dtype == mx.int64
    assert mx.array_equal(loaded["embeddings"], expected["pt_embeddings"]).item()
    assert mx.array_equal(loaded["cache"], expected["pt_cache"]).item()


# --- dtypes, strides, offsets --------------------------------------------------------------------


def test_bfloat16_storage(tmp_path):
    values = np.array([1.5, -2.0, 0.15625, 3.0], dtype=np.float32)  # exactly representable in bf16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    path = _write_pt(tmp_path / "bf16.pt", _dict({"w": _tensor("BFloat16Storage", "0", 4, 0, (2, 2), (2, 1))}), {"0": bits.tobytes()})
    w = load_torch_zip(path)["w"]
    assert w.dtype == mx.bfloat16
    assert w.astype(mx.float32).tolist() == [[1.5, -2.0], [0.15625, 3.0]]


@pytest.mark.parametrize(
    "storage_type, dtype", [("FloatStorage", "<f4"), ("HalfStorage", "<f2"), ("LongStorage", "<i8"), ("IntStorage", "<i4")]
)
def test_strided_view_with_offset(tmp_path, storage_type, dtype):
    storage = np.arange(10).astype(dtype)
    # size (2, 3), stride (1, 2), offset 1: element [i, j] = storage[1 + i + 2 j]
    pkl = _dict({"t": _tensor(storage_type, "0", 10, 1, (2, 3), (1, 2))})
    t = load_torch_zip(_write_pt(tmp_path / "s.pt", pkl, {"0": storage.tobytes()}))["t"]
    assert t.tolist() == [[1, 3, 5], [2, 4, 6]]


def test_big_endian_file(tmp_path):
    storage = np.array([1.25, -7.0], dtype=">f4")
    pkl = _dict({"t": _tensor("FloatStorage", "0", 2, 0, (2,), (1,))})
    t = load_torch_zip(_write_pt(tmp_path / "be.pt", pkl, {"0": storage.tobytes()}, byteorder=b"big"))["t"]
    assert t.tolist() == [1.25, -7.0]


def test_shared_storage_between_tensors(tmp_path):
    storage = np.arange(6, dtype="<f4")
    pkl = _dict({"a": _tensor("FloatStorage", "0", 6, 0, (3,), (1,)), "b": _tensor("FloatStorage", "0", 6, 3, (3,), (1,))})
    out = load_torch_zip(_write_pt(tmp_path / "shared.pt", pkl, {"0": storage.tobytes()}))
    assert out["a"].tolist() == [0, 1, 2] and out["b"].tolist() == [3, 4, 5]


def test_view_past_the_storage_is_refused(tmp_path):
    pkl = _dict({"t": _tensor("FloatStorage", "0", 4, 2, (4,), (1,))})
    with pytest.raises(CheckpointError, match="past the end"):
        load_torch_zip(_write_pt(tmp_path / "oob.pt", pkl, {"0": np.zeros(4, "<f4").tobytes()}))


def test_short_storage_entry_is_refused(tmp_path):
    pkl = _dict({"t": _tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
    with pytest.raises(CheckpointError, match="shorter"):
        load_torch_zip(_write_pt(tmp_path / "short.pt", pkl, {"0": b"\0" * 8}))


# --- malicious and broken files --------------------------------------------------------------


@pytest.mark.parametrize(
    "module, name, arg_of",
    [
        ("os", "system", lambda m: f"touch {m}"),
        ("posix", "system", lambda m: f"touch {m}"),
        ("builtins", "eval", lambda m: f"open({str(m)!r}, 'w')"),
    ],
)
def test_code_execution_is_refused_and_does_not_happen(tmp_path, module, name, arg_of):
    marker = tmp_path / "pwned"
    evil = pickle.PROTO + b"\x02" + _global(module, name) + _tuple([_str(arg_of(marker))]) + pickle.REDUCE + pickle.STOP
    path = _write_pt(tmp_path / "evil.pt", evil, {})
    with pytest.raises(CheckpointError, match=rf"evil\.pt.*{module}\.{name}"):
        load_torch_zip(path)
    assert not marker.exists()


def test_evil_global_hidden_inside_a_tensor_dict_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil_value = _global("subprocess", "call") + _tuple([_tuple([_str("touch"), _str(str(marker))])]) + pickle.REDUCE
    path = _write_pt(tmp_path / "evil2.pt", _dict({"embeddings": evil_value}), {})
    with pytest.raises(CheckpointError, match="subprocess.call"):
        load_torch_zip(path)
    assert not marker.exists()


def test_not_a_zip(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(b"\x80\x02}q\x00.")  # a legacy (non-zip) pickle
    with pytest.raises(CheckpointError, match="not a zip-format torch file"):
        load_torch_zip(path)


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_truncated_file(tmp_path, voice_dir):
    data = (voice_dir / "VOICE.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_torch_zip(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch_zip(tmp_path / "absent.pt")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="no data.pkl"):
        load_torch_zip(path)
