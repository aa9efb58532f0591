"""The user's side after the fact: segmentation, `ppchat transcribe` on a tiny random Qwen3-ASR, export, replay.

No real ASR weights exist here: the checkpoint is random, so the words are nonsense.
What is checked is where the words go: which audio each segment covers (against the
bursts the test put there), that each segment's text is what mlx-qwen3-asr itself says
for exactly that audio, and how both speakers are merged.
"""

from __future__ import annotations

import json

import mlx_qwen3_asr
import numpy as np
import pytest
import soundfile as sf
import soxr

from ppchat.asr.model_files import AsrModelMissing, resolve_asr_model
from ppchat.asr.random_model import build_random_asr
from ppchat.asr.segmenter import Segmenter, SegmenterSettings, split
from ppchat.asr.transcriber import Transcriber, transcribe_track
from ppchat.cli import main
from ppchat.errors import CheckpointError
from ppchat.sessions.export import export
from ppchat.sessions.store import load_session
from ppchat.sessions.user_transcript import USER_TRANSCRIPT, UserLine, read_user_transcript, write_user_transcript
from tests.asr_helpers import SESSION_S, record_session, speech_track

PAD = 0.2  # SegmenterSettings.pad_s
# The bursts as the segmenter should report them: padded, the two close ones merged.
EXPECTED = [(0.8, 2.4), (3.8, 5.6), (7.32, 8.2)]


def flat(pairs):
    return [t for pair in pairs for t in pair]


def to_16k(track: np.ndarray) -> np.ndarray:
    return soxr.resample(np.nan_to_num(track), 24000, 16000, quality="HQ")


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    return build_random_asr(tmp_path_factory.mktemp("asr") / "tiny-qwen3-asr")


@pytest.fixture(scope="module")
def transcriber(tiny_asr):
    return Transcriber(tiny_asr)


# --- segmentation --------------------------------------------------------------------------------


def test_utterances_are_found_where_the_speech_is():
    spans = split(to_16k(speech_track()))
    assert flat((s.start / 16000, s.end / 16000) for s in spans) == pytest.approx(flat(EXPECTED), abs=0.021)


def test_streaming_in_frames_finds_the_same_utterances_as_the_whole_track():
    audio = to_16k(speech_track())
    seg = Segmenter()
    streamed = []
    for lo in range(0, len(audio), 1280):  # one 80 ms step at 16 kHz
        streamed += seg.feed(audio[lo : lo + 1280])
    streamed += seg.flush()
    assert streamed == split(audio)


def test_clicks_are_not_utterances_and_long_speech_is_cut():
    click = speech_track(bursts=[(1.0, 1.06)])
    assert split(to_16k(click)) == []
    long = to_16k(speech_track(bursts=[(0.5, 9.0)]))
    spans = split(long, SegmenterSettings(max_s=3.0))
    assert [round((s.end - s.start) / 16000, 2) for s in spans[:2]] == [3.0, 3.0]
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # no overlap, nothing twice
    assert spans[0].start / 16000 == pytest.approx(0.5 - PAD, abs=0.021) and spans[-1].end / 16000 == pytest.approx(9.0 + PAD, abs=0.021)


def test_silence_and_non_finite_samples_give_no_utterances(transcriber):
    assert split(to_16k(np.zeros(24000 * 2, np.float32))) == []
    bad = speech_track()
    bad[: 24000 * 3] = np.nan  # a damaged stretch over the first burst counts as silence
    bad[24000 * 3 : 24000 * 3 + 1000] = np.inf
    segments = transcribe_track(bad, transcriber)
    assert flat((s.start, s.end) for s in segments) == pytest.approx(flat(EXPECTED[1:]), abs=0.021)


# --- transcription ---------------------------------------------------------------------------------


def test_each_segment_holds_what_the_library_says_for_exactly_its_audio(tiny_asr, transcriber):
    track = speech_track()
    seen = []
    segments = transcribe_track(track, transcriber, progress=lambda *p: seen.append(p))
    assert seen == [(9.6, 9.6, 3)]  # one 10 s piece
    assert flat((s.start, s.end) for s in segments) == pytest.approx(flat(EXPECTED), abs=0.021)
    audio16 = soxr.resample(track, 24000, 16000, quality="HQ")  # the resampling the issue asks for
    model, _ = mlx_qwen3_asr.load_model(str(tiny_asr))
    for seg in segments:
        clip = audio16[round(seg.start * 16000) : round(seg.end * 16000)]
        expected = mlx_qwen3_asr.transcribe(clip.astype(np.float32), model=model).text
        assert seg.text == " ".join(expected.split())
    assert any(s.text for s in segments)  # the random vocabulary decodes to words


def test_missing_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AsrModelMissing, match=r"Qwen/Qwen3-ASR-0.6B is not downloaded; run `ppchat download --asr`"):
        resolve_asr_model(None)
    with pytest.raises(AsrModelMissing, match=r"--asr-model Qwen/Qwen3-ASR-1.7B"):
        resolve_asr_model("Qwen/Qwen3-ASR-1.7B")
    with pytest.raises(AsrModelMissing, match="does not exist"):
        resolve_asr_model(str(tmp_path / "nowhere"))


def test_incomplete_or_foreign_model_folders_are_refused(tiny_asr, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(AsrModelMissing, match="lacks vocab.json, merges.txt, \\*.safetensors"):
        resolve_asr_model(str(folder))
    for name in ("vocab.json", "merges.txt", "model.safetensors"):
        (folder / name).write_bytes((tiny_asr / name).read_bytes())
    with pytest.raises(CheckpointError, match="not a Qwen3-ASR config"):
        resolve_asr_model(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        resolve_asr_model(str(folder))
    assert resolve_asr_model(str(tiny_asr)) == tiny_asr


# --- the session file, export, replay --------------------------------------------------------------


def test_older_sessions_load_without_a_user_transcript_and_damage_is_a_warning(tmp_path):
    session_dir = record_session(tmp_path / "sessions")
    session = load_session(session_dir)
    assert session.user_lines == [] and not session.warnings
    (session_dir / USER_TRANSCRIPT).write_text("{torn")
    session = load_session(session_dir)
    assert session.user_lines == [] and any("user_transcript.json is unreadable" in w for w in session.warnings)
    (session_dir / USER_TRANSCRIPT).write_text(json.dumps(
        {"format_version": 1, "segments": [{"start": 1.0, "end": 2.0, "text": "ok"}, {"start": "x"}, {"start": 3, "end": 2, "text": "?"}]}))
    warnings = []
    assert read_user_transcript(session_dir, warnings) == [UserLine(1.0, 2.0, "ok")]
    assert warnings == ["user_transcript.json: 2 damaged segment(s) skipped"]


def test_export_interleaves_both_speakers_by_time(tmp_path):
    session_dir = record_session(tmp_path / "sessions")
    lines = [UserLine(0.8, 2.4, "Hi, how are you?"), UserLine(3.8, 5.6, ""), UserLine(7.32, 8.2, "See you.")]
    write_user_transcript(session_dir, lines, model="test", language=None)
    session = load_session(session_dir)
    txt, srt, js = export(session, tmp_path / "out", ("txt", "srt", "json"))
    # Agent: "Hello there" steps 5-6 (0.40-0.56 s), "Fine" step 40 (3.20-3.28 s), "Bye" step 80 (6.40-6.48 s).
    assert txt.read_text() == (
        "[00:00.4] Agent: Hello there\n[00:00.8] User: Hi, how are you?\n[00:03.2] Agent: Fine\n"
        "[00:06.4] Agent: Bye\n[00:07.3] User: See you.\n"
    )
    assert srt.read_text().split("\n\n")[:2] == [
        "1\n00:00:00,400 --> 00:00:00,560\nAgent: Hello there",
        "2\n00:00:00,800 --> 00:00:02,400\nUser: Hi, how are you?",
    ]
    doc = json.loads(js.read_text())
    assert len(doc["text"]) == session.frames and doc["text"][5] == " Hello"
    assert doc["dialogue"][:2] == [
        {"speaker": "agent", "start": 0.4, "end": 0.56, "text": "Hello there"},
        {"speaker": "user", "start": 0.8, "end": 2.4, "text": "Hi, how are you?"},
    ]
    assert [d["speaker"] for d in doc["dialogue"]] == ["agent", "user", "agent", "agent", "user"]


def test_transcribe_command_then_export_and_replay(tiny_asr, transcriber, tmp_path, capsys):
    root = tmp_path / "sessions"
    session_dir = record_session(root)
    assert main(["transcribe", "last", "--asr-model", str(tiny_asr), "--sessions-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 utterance(s)" in out and str(session_dir / USER_TRANSCRIPT) in out
    doc = json.loads((session_dir / USER_TRANSCRIPT).read_text())
    assert doc["source"] == "user.wav" and doc["model"] == str(tiny_asr)
    segments = transcribe_track(sf.read(session_dir / "user.wav", dtype="float32")[0], transcriber)
    assert [(s["start"], s["end"], s["text"]) for s in doc["segments"]] == [tuple(s) for s in segments]

    assert main(["replay", "last", "--no-tui", "--sessions-dir", str(root)]) == 0
    replay = capsys.readouterr().out.splitlines()
    users = [line for line in replay if "] User: " in line]
    assert len(users) == sum(1 for s in segments if s.text)
    assert replay[0] == "[00:00.4] Agent: Hello there" and replay[1].startswith("[00:00.8] User: ")


def test_transcribe_refuses_a_session_without_user_audio_and_a_missing_model(tiny_asr, tmp_path, monkeypatch, capsys):
    root = tmp_path / "sessions"
    session_dir = record_session(root)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["transcribe", "last", "--sessions-dir", str(root)]) == 2
    assert "ppchat download --asr" in capsys.readouterr().err
    (session_dir / "user.wav").write_bytes(b"RIFF junk")
    assert main(["transcribe", "last", "--asr-model", str(tiny_asr), "--sessions-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no user audio" in err and "user.wav" in err
    assert not (session_dir / USER_TRANSCRIPT).exists()


def test_a_session_whose_user_track_is_silent_gets_an_empty_transcript(tiny_asr, tmp_path, capsys):
    root = tmp_path / "sessions"
    session_dir = record_session(root, user=np.zeros(round(SESSION_S * 24000), np.float32))
    assert main(["transcribe", "last", "--asr-model", str(tiny_asr), "--sessions-dir", str(root)]) == 0
    assert json.loads((session_dir / USER_TRANSCRIPT).read_text())["segments"] == []
    assert "0 utterance(s)" in capsys.readouterr().out


def test_download_asr_fetches_the_library_files_and_checks_them(tiny_asr, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):  # stands in for the hub: no network in tests
        calls.append((repo_id, kwargs))
        return str(tiny_asr if repo_id == "Qwen/Qwen3-ASR-0.6B" else tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert main(["download", "--asr"]) == 0
    assert calls == [("Qwen/Qwen3-ASR-0.6B", {"revision": None, "allow_patterns": ["*.json", "*.safetensors", "*.txt", "*.model"]})]
    assert f"Qwen/Qwen3-ASR-0.6B is ready in {tiny_asr}" in capsys.readouterr().out
    assert main(["download", "--asr-model", "someone/empty"]) == 2  # a repo without the model files
    assert "lacks config.json" in capsys.readouterr().err


def test_a_long_track_is_read_in_pieces_with_the_same_result_as_whole(monkeypatch):
    # Utterances across the 10 s piece boundaries: the pieces must not cut or shift them.
    track = speech_track(bursts=[(2.0, 3.0), (9.5, 10.8), (19.0, 21.0), (29.9, 30.4)], seconds=32.0)
    clips = []

    class Probe:  # stands in for the model: records the audio it is given
        def text(self, clip):
            clips.append(clip.copy())
            return f"clip {len(clips)}"

    seen = []
    segments = transcribe_track(track, Probe(), progress=lambda *p: seen.append(p))
    whole = to_16k(track)
    spans = split(whole)
    assert [(s.start, s.end) for s in segments] == [(round(a / 16000, 3), round(b / 16000, 3)) for a, b in spans]
    assert len(spans) == 4 and [d for d, _, _ in seen] == [10.0, 20.0, 30.0, 32.0]
    for clip, (a, b) in zip(clips, spans, strict=True):
        np.testing.assert_array_equal(clip, whole[a:b])
