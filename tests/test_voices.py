"""Voice prompts: presets, .pt conversion and reuse, audio voices and BS.1770 loudness."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import soundfile

from ppchat.errors import AudioError, CheckpointError
from ppchat.models import voices
from ppchat.models.voices import VoicePrompt, integrated_loudness, load_voice
from tests.conftest import fixture_params


def test_the_eighteen_official_presets():
    expected = {f"NATF{i}" for i in range(4)} | {f"NATM{i}" for i in range(4)}
    expected |= {f"VARF{i}" for i in range(5)} | {f"VARM{i}" for i in range(5)}
    assert len(voices.PRESET_VOICES) == 18 and set(voices.PRESET_VOICES) == expected


# --- .pt voices ----------------------------------------------------------------------------------


def _expected(voice_dir):
    io = mx.load(str(voice_dir / "io.safetensors"))
    cfg = json.loads((voice_dir / "config.json").read_text())
    emb = io["pt_embeddings"]
    return emb.reshape(emb.shape[0], emb.shape[-1]), np.array(io["pt_cache"])[0], cfg["n_voice_frames"]


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_pt_voice_by_path(voice_dir, tmp_path):
    emb, cache, n_frames = _expected(voice_dir)
    voice = load_voice(voice_dir / "VOICE.pt", cache_dir=tmp_path / "cache")
    assert voice.kind == "embeddings" and voice.name == "VOICE"
    assert mx.array_equal(voice.embeddings, emb).item()
    assert voice.cache.dtype == np.int32 and np.array_equal(voice.cache, cache)
    assert voice.n_frames == n_frames


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_conversion_is_cached_and_reused(voice_dir, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = load_voice(voice_dir / "VOICE.pt", cache_dir=cache_dir)
    converted = list(cache_dir.glob("*.safetensors"))
    assert len(converted) == 1
    stored = mx.load(str(converted[0]))
    assert stored["n_frames"].tolist() == [first.n_frames] and stored["cache"].dtype == mx.int32

    def no_reconversion(path):
        raise AssertionError("the .pt was converted again")

    monkeypatch.setattr(voices, "load_torch_zip", no_reconversion)
    again = load_voice(voice_dir / "VOICE.pt", cache_dir=cache_dir)
    assert mx.array_equal(again.embeddings, first.embeddings).item() and np.array_equal(again.cache, first.cache)


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_corrupt_cached_conversion_is_redone(voice_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    first = load_voice(voice_dir / "VOICE.pt", cache_dir=cache_dir)
    (converted,) = cache_dir.glob("*.safetensors")
    converted.write_bytes(converted.read_bytes()[:50])
    again = load_voice(voice_dir / "VOICE.pt", cache_dir=cache_dir)
    assert mx.array_equal(again.embeddings, first.embeddings).item()
    assert mx.load(str(converted))["n_frames"].tolist() == [first.n_frames]


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
@pytest.mark.parametrize("request_name", ["NATF0", "natf0", "NATF0.pt"])
def test_voice_by_name_in_voices_dir(voice_dir, tmp_path, request_name):
    folder = tmp_path / "voices"
    folder.mkdir()
    shutil.copy(voice_dir / "VOICE.pt", folder / "NATF0.pt")
    voice = load_voice(request_name, folder, tmp_path / "cache")
    assert voice.kind == "embeddings" and voice.name == "NATF0"


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_voice_for_another_model_width_is_refused(voice_dir, tmp_path):
    emb, _, _ = _expected(voice_dir)
    with pytest.raises(CheckpointError, match=rf"width {emb.shape[1]}.*width {emb.shape[1] + 1}"):
        load_voice(voice_dir / "VOICE.pt", cache_dir=tmp_path, expected_dim=emb.shape[1] + 1)


def test_unknown_voice_lists_available_ones(tmp_path):
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "NATF0.pt").write_bytes(b"")
    (folder / "mine.wav").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unknown voice 'NOPE'.*available voices: NATF0, mine"):
        load_voice("NOPE", folder, tmp_path)


def test_a_preset_name_on_a_model_without_presets_says_so_not_that_presets_exist(tmp_path):
    # The demo model: `--voice NATF0` must not answer "available voices: NATF0, ...".
    for folder in (None, tmp_path / "empty"):
        with pytest.raises(CheckpointError, match=r"unknown voice 'NATF0': this model has no preset voices .*audio file") as err:
            load_voice("NATF0", folder, tmp_path)
        assert "available voices" not in str(err.value)


def test_a_voice_path_that_is_not_there_is_called_a_missing_file(tmp_path):
    """It was answered "unknown voice …: pass a path to an audio file" (seen in the console's
    voice picker, after typing a path); a preset name still gets the preset answer."""
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "NATF0.pt").write_bytes(b"")
    for given in (tmp_path / "nope" / "me.wav", "me.wav", "takes/me.flac"):
        with pytest.raises(CheckpointError, match=r"voice file .*me\.(wav|flac) not found: check the path") as err:
            load_voice(given, folder, tmp_path)
        assert "available voices" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"voice .* is a folder: give an audio file"):
        load_voice(folder, folder, tmp_path)
    with pytest.raises(CheckpointError, match=r"unknown voice 'NOPE'.*available voices: NATF0"):
        load_voice("NOPE", folder, tmp_path)


def test_pt_without_the_voice_tensors_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(voices, "load_torch_zip", lambda path: {"weights": mx.zeros((2,))})
    path = tmp_path / "odd.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="odd.pt must hold 'embeddings' and 'cache'"):
        load_voice(path, cache_dir=tmp_path / "cache")


def test_voice_prompt_requires_the_fields_of_its_kind():
    with pytest.raises(ValueError):
        VoicePrompt(kind="embeddings", name="x", embeddings=mx.zeros((2, 4)))
    assert VoicePrompt(kind="codes", name="x", codes=np.zeros((8, 5), np.int32)).n_frames == 5


# --- audio voices --------------------------------------------------------------------------------


def _sine(freq, seconds, rate, amplitude=1.0):
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def test_audio_voice_is_channel_0_at_24k_and_minus_24_lufs(tmp_path, caplog):
    rate = 48000
    left = _sine(440, 3.0, rate, 0.05)
    right = np.random.default_rng(0).standard_normal(len(left)) * 0.3
    path = tmp_path / "me.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    voice = load_voice(path, cache_dir=tmp_path)
    assert voice.kind == "audio" and voice.name == "me" and voice.pcm.dtype == np.float32
    assert abs(len(voice.pcm) - 3 * 24000) <= 1
    assert integrated_loudness(voice.pcm, 24000) == pytest.approx(-24.0, abs=1e-3)
    # The right channel (noise) must be gone: the result is a scaled 440 Hz sine.
    spectrum = np.abs(np.fft.rfft(voice.pcm))
    assert np.argmax(spectrum) * 24000 / len(voice.pcm) == pytest.approx(440, abs=1)
    assert spectrum[np.argmax(spectrum)] ** 2 / np.sum(spectrum**2) > 0.95
    assert voice.n_frames == 3 * 24000 // 1920 + 1
    assert "only channel 0" in caplog.text


def test_unreadable_audio(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF....garbage")
    with pytest.raises(AudioError, match="broken.wav"):
        load_voice(path, cache_dir=tmp_path)


def test_silent_audio_is_refused(tmp_path):
    path = tmp_path / "quiet.wav"
    soundfile.write(path, np.zeros(24000), 24000)
    with pytest.raises(AudioError, match="silent"):
        load_voice(path, cache_dir=tmp_path)


def test_too_short_audio_is_refused():
    with pytest.raises(AudioError, match="too short"):
        integrated_loudness(np.ones(100), 24000)


# --- BS.1770 from first principles ---------------------------------------------------------------


def test_full_scale_1khz_sine_is_about_minus_3_lufs():
    # ITU-R BS.1770: a 0 dBFS 1 kHz sine in one channel reads -3.01 LKFS. The RBJ filter
    # design the reference (pyloudnorm) uses is a close approximation of the standard's.
    assert integrated_loudness(_sine(1000, 5, 24000), 24000) == pytest.approx(-3.01, abs=0.1)


def test_loudness_scales_with_level():
    x = _sine(300, 3, 24000, 0.5) + _sine(2500, 3, 24000, 0.2)
    assert integrated_loudness(0.1 * x, 24000) == pytest.approx(integrated_loudness(x, 24000) - 20, abs=1e-9)


def test_gating_ignores_silence():
    x = _sine(1000, 4, 24000, 0.3)
    padded = np.concatenate([x, np.zeros(4 * 24000)])
    # Without gating the mean power would halve (-3 dB); the -70 LUFS gate drops silent blocks.
    assert integrated_loudness(padded, 24000) == pytest.approx(integrated_loudness(x, 24000), abs=0.3)


def test_k_weighting_matches_the_standard_at_48k():
    # BS.1770-4 Table 1 / Table 2 coefficients for 48 kHz.
    (b1, a1), (_, a2) = voices.k_weighting(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=2e-4)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=2e-4)
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-4)


def test_fft_iir_filter_equals_the_difference_equation():
    b, a = voices.k_weighting(24000)[1]
    x = np.random.default_rng(1).standard_normal(2000)
    y = np.zeros_like(x)
    for n in range(len(x)):
        y[n] = sum(b[k] * x[n - k] for k in range(3) if n >= k) - sum(a[k] * y[n - k] for k in (1, 2) if n >= k)
    np.testing.assert_allclose(voices.iir_filter(b, a, x), y, atol=1e-10)
