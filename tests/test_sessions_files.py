"""Low-level session files: streaming WAV writer/repair, JSON Lines, atomic writes, disk errors."""

from __future__ import annotations

import errno
import os
import struct

import numpy as np
import pytest
import soundfile as sf

from ppchat.errors import SessionError
from ppchat.sessions.files import AppendOnlyFile, RecordingStopped, atomic_write_bytes
from ppchat.sessions.jsonl import JsonlWriter, read_jsonl
from ppchat.sessions.wav_writer import HEADER_BYTES, WavWriter, read_wav, repair_wav

RATE = 24000


def noise(n: int, seed: int, channels: int = 1) -> np.ndarray:
    shape = (n,) if channels == 1 else (n, channels)
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def read_back(path):
    data, rate = sf.read(path, dtype="float32", always_2d=False)
    assert rate == RATE
    assert sf.info(path).subtype == "FLOAT"
    return data


def test_wav_round_trip_is_exact(tmp_path):
    samples = noise(5000, 1)
    writer = WavWriter(tmp_path / "a.wav")
    writer.append(samples[:1920])
    writer.append(samples[1920:3000])
    writer.flush()
    writer.append(samples[3000:])
    writer.close()
    np.testing.assert_array_equal(read_back(tmp_path / "a.wav"), samples)
    np.testing.assert_array_equal(read_wav(tmp_path / "a.wav"), samples)
    assert os.path.getsize(tmp_path / "a.wav") == HEADER_BYTES + 4 * samples.size


def test_stereo_wav_round_trip(tmp_path):
    samples = noise(3000, 2, channels=2)
    writer = WavWriter(tmp_path / "s.wav", channels=2)
    writer.append(samples)
    writer.close()
    np.testing.assert_array_equal(read_back(tmp_path / "s.wav"), samples)
    with pytest.raises(ValueError):
        WavWriter(tmp_path / "t.wav", channels=2).append(samples[:, 0])


def test_flushed_samples_are_playable_before_close(tmp_path):
    """A crash after a flush must leave a valid file with exactly the flushed samples."""
    samples = noise(4000, 3)
    writer = WavWriter(tmp_path / "live.wav")
    assert read_back(tmp_path / "live.wav").size == 0  # placeholder header is already valid
    writer.append(samples[:2500])
    writer.flush()
    writer.append(samples[2500:])  # buffered only: lost in a crash
    np.testing.assert_array_equal(read_back(tmp_path / "live.wav"), samples[:2500])
    assert writer.frames_committed == 2500
    writer.close()


def _header_only_wav(path, samples_bytes: bytes) -> None:
    """What a crash between appending samples and patching the header leaves."""
    writer = WavWriter(path)
    writer.close()
    with open(path, "ab") as f:
        f.write(samples_bytes)


def test_repair_wav_extends_header_to_written_samples(tmp_path):
    path = tmp_path / "crash.wav"
    samples = noise(3000, 4)
    _header_only_wav(path, samples.tobytes() + b"\x01\x02")  # plus half a sample from a torn write
    assert read_back(path).size == 0
    assert repair_wav(path) is True
    np.testing.assert_array_equal(read_back(path), samples)
    assert os.path.getsize(path) == HEADER_BYTES + 4 * samples.size
    assert repair_wav(path) is False


def test_repair_wav_shrinks_header_claiming_missing_samples(tmp_path):
    path = tmp_path / "short.wav"
    samples = noise(3000, 5)
    writer = WavWriter(path)
    writer.append(samples)
    writer.close()
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 4 * 1000)
    assert repair_wav(path) is True
    np.testing.assert_array_equal(read_back(path), samples[:1000])


@pytest.mark.parametrize("content", [b"", b"RIFF", b"garbage" * 100, b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_garbage_wav_is_a_clear_session_error(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(SessionError, match="bad.wav"):
        repair_wav(path)
    with pytest.raises(SessionError, match="bad.wav"):
        read_wav(path)


def test_pcm16_wav_is_refused_by_reader(tmp_path):
    path = tmp_path / "pcm.wav"
    sf.write(path, noise(100, 6), RATE, subtype="PCM_16")
    with pytest.raises(SessionError, match="float"):
        read_wav(path)


def _fail_writes_to(monkeypatch, path, after_bytes: int, error: OSError) -> None:
    """Let writes to `path` succeed for `after_bytes` bytes, then fail like a full disk (short write first)."""
    real_open, real_pwrite = os.open, os.pwrite
    fds: set[int] = set()
    budget = [after_bytes]

    def fake_open(p, flags, mode=0o777, *args, **kwargs):
        fd = real_open(p, flags, mode, *args, **kwargs)
        if os.fspath(p) == os.fspath(path):
            fds.add(fd)
        return fd

    def fake_pwrite(fd, data, offset):
        if fd not in fds:
            return real_pwrite(fd, data, offset)
        if budget[0] <= 0:
            raise error
        n = real_pwrite(fd, bytes(data)[: budget[0]], offset)
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    ],
)
def test_write_error_keeps_flushed_samples_intact(tmp_path, monkeypatch, error, reason):
    path = tmp_path / "full.wav"
    samples = noise(6000, 7)
    _fail_writes_to(monkeypatch, path, HEADER_BYTES + 4 * 2000 + 12 + 4 * 1000 + 6, error)
    writer = WavWriter(path)
    writer.append(samples[:2000])
    writer.flush()  # fits; header patches cost 12 bytes of the budget
    writer.append(samples[2000:])
    with pytest.raises(RecordingStopped, match=reason) as caught:
        writer.flush()  # short write of 1000.5 samples, then the error
    assert isinstance(caught.value, SessionError)
    assert str(path) in str(caught.value)
    writer.abandon()
    monkeypatch.undo()
    assert os.path.getsize(path) == HEADER_BYTES + 4 * 2000  # the torn batch was cut off again
    np.testing.assert_array_equal(read_back(path), samples[:2000])
    assert repair_wav(path) is False


def test_append_only_file_never_overwrites(tmp_path):
    path = tmp_path / "exists"
    path.write_bytes(b"precious")
    with pytest.raises(RecordingStopped, match="already exists"):
        AppendOnlyFile(path)
    assert path.read_bytes() == b"precious"


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "session.json"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.json"]


def test_atomic_write_into_missing_folder_is_clear(tmp_path):
    with pytest.raises(RecordingStopped, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "session.json", b"x")


def test_jsonl_round_trip(tmp_path):
    records = [{"step": i, "piece": "▁héllo" if i % 2 else None} for i in range(5)]
    writer = JsonlWriter(tmp_path / "log.jsonl")
    for record in records[:3]:
        writer.append(record)
    writer.flush()
    assert read_jsonl(tmp_path / "log.jsonl").records == records[:3]
    for record in records[3:]:
        writer.append(record)
    writer.close()
    contents = read_jsonl(tmp_path / "log.jsonl")
    assert contents.records == records
    assert not contents.torn and contents.bad_lines == []
    assert contents.complete_bytes == os.path.getsize(tmp_path / "log.jsonl")


def test_jsonl_reader_reports_torn_last_line_and_bad_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    good = b'{"step": 0}\n'
    path.write_bytes(good + b"not json\n" + b"[1, 2]\n" + b'{"step": 1}\n' + b'{"step": 2, "t"')
    contents = read_jsonl(path)
    assert contents.records == [{"step": 0}, {"step": 1}]
    assert contents.bad_lines == [2, 3]
    assert contents.torn
    assert contents.complete_bytes == len(path.read_bytes()) - len(b'{"step": 2, "t"')


def test_jsonl_reader_missing_file_is_session_error(tmp_path):
    with pytest.raises(SessionError, match="missing.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_header_layout_matches_riff_spec(tmp_path):
    """Check the header fields directly, independent of any WAV library."""
    writer = WavWriter(tmp_path / "h.wav", channels=2)
    writer.append(noise(10, 8, channels=2))
    writer.close()
    raw = (tmp_path / "h.wav").read_bytes()
    assert raw[:4] == b"RIFF" and struct.unpack("<I", raw[4:8])[0] == len(raw) - 8 and raw[8:12] == b"WAVE"
    fmt = struct.unpack("<4sIHHIIHHH", raw[12:38])
    assert fmt == (b"fmt ", 18, 3, 2, RATE, RATE * 8, 8, 32, 0)
    assert struct.unpack("<4sII", raw[38:50]) == (b"fact", 4, 10)
    assert struct.unpack("<4sI", raw[50:58]) == (b"data", 80)
