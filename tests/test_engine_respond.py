"""`ppchat respond` end to end on the built-in demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from ppchat.cli import main
from ppchat.conversation import TalkOptions
from ppchat.engine.transcript import reference_text_entry
from ppchat.errors import AudioError
from ppchat.models.loader import load_model
from ppchat.respond import read_audio, respond
from ppchat.sampling import Sampling


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)


def _speechlike(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    sig = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    if channels == 1:
        return sig.astype(np.float32)
    return np.stack([sig, 0.5 * sig[::-1]], axis=1).astype(np.float32)


def _run(demo_model, tmp_path, wav, seed=7, **kw):
    out = tmp_path / "out.wav"
    text = tmp_path / "out.json"
    options = TalkOptions(model="demo", sampling=Sampling(seed=seed), sessions_dir=tmp_path / "sessions",
                          monitor=False, prompt="casual", **kw)
    assert respond(wav, out, options, text_json=text, model=demo_model) == 0
    return out, json.loads(text.read_text())


@pytest.mark.parametrize("rate,channels,subtype", [(44100, 2, "PCM_16"), (8000, 1, "PCM_24"), (24000, 1, "FLOAT")])
def test_respond_any_input_format(demo_model, tmp_path, rate, channels, subtype):
    wav = tmp_path / "in.wav"
    sf.write(wav, _speechlike(1.3, rate, channels), rate, subtype=subtype)
    out, doc = _run(demo_model, tmp_path, wav)
    agent, out_rate = sf.read(out, dtype="float32")
    assert out_rate == 24000 and agent.ndim == 1
    # Same length as the input at 24 kHz (the reference offline tool's rule).
    expected = len(read_audio(wav)[0])
    assert len(agent) == expected
    frames = -(-expected // 1920)
    assert len(doc["text"]) == len(doc["steps"]) == frames
    assert all(set(s["ms"]) >= {"encode", "temporal", "depformer", "decode", "total"} for s in doc["steps"])
    assert np.isfinite(agent).all() and np.abs(agent).max() > 0


def test_respond_is_deterministic_for_a_seed(demo_model, tmp_path):
    wav = tmp_path / "in.wav"
    sf.write(wav, _speechlike(1.0, 24000), 24000)
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        (tmp_path / name).mkdir()
        runs[name] = _run(demo_model, tmp_path / name, wav, seed=seed)
    (a_out, a), (b_out, b), (c_out, c) = runs["a"], runs["b"], runs["c"]
    assert [s["token"] for s in a["steps"]] == [s["token"] for s in b["steps"]]
    np.testing.assert_array_equal(sf.read(a_out)[0], sf.read(b_out)[0])
    assert [s["token"] for s in a["steps"]] != [s["token"] for s in c["steps"]] or not np.array_equal(
        sf.read(a_out)[0], sf.read(c_out)[0])


def test_respond_records_a_session(demo_model, tmp_path):
    from ppchat.sessions.store import list_sessions, load_session

    wav = tmp_path / "in.wav"
    sf.write(wav, _speechlike(0.8, 24000), 24000)
    _, doc = _run(demo_model, tmp_path, wav)
    [summary] = list_sessions(tmp_path / "sessions")
    session = load_session(summary.path)
    assert session.status == "ok"
    assert session.frames == len(doc["steps"])
    assert [s.text_token for s in session.steps] == [s["token"] for s in doc["steps"]]
    user = read_audio(wav)[0]
    np.testing.assert_array_equal(session.user_audio[: len(user)], user)


def test_unreadable_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="broken.wav"):
        read_audio(bad)
    assert main(["respond", "-i", str(bad), "-o", str(tmp_path / "o.wav"), "--model", "demo"]) == 2
    assert "broken.wav" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_empty_input_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 24000)
    with pytest.raises(AudioError, match="no samples"):
        read_audio(empty)


def test_reference_text_entries():
    assert reference_text_entry(0, None) == "EPAD"
    assert reference_text_entry(3, None) == "PAD"
    assert reference_text_entry(57, " hello") == " hello"


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    wav = tmp_path / "in.wav"
    sf.write(wav, _speechlike(0.3, 24000), 24000)
    target = tmp_path / "missing-folder" / "out.wav"
    code = main(["respond", "-i", str(wav), "-o", str(target), "--model", "demo", "--sessions-dir", str(tmp_path / "s")])
    assert code == 2
    assert "missing-folder" in capsys.readouterr().err
    assert not target.exists()
