"""Voice prompts: the 18 official presets, `.pt` conversion and custom audio voices.

A voice is either a precomputed `.pt` (input embeddings + token ring, spec §6.3), which is
converted once to safetensors in the cache and reused, or an audio file (spec §6.2), which
is read, resampled to 24 kHz mono and loudness-normalised here; the engine then encodes
it with Mimi.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import soundfile
import soxr

from ppchat import paths
from ppchat.atomic import replacing
from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE
from ppchat.errors import AudioError, CheckpointError
from ppchat.models.checkpoint import read_safetensors
from ppchat.models.torch_zip import load_torch_zip
from ppchat.validate import check_sample_rate, unreadable_audio

log = logging.getLogger(__name__)

PRESET_VOICES = tuple(f"NAT{g}{i}" for g in "FM" for i in range(4)) + tuple(f"VAR{g}{i}" for g in "FM" for i in range(5))
DEFAULT_VOICE = "NATF0"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
TARGET_LUFS = -24.0
_CONVERTED_FORMAT = "ppchat-voice-v1"


@dataclass(frozen=True)
class VoicePrompt:
    """What the engine needs to run the voice-prompt phase.

    kind "embeddings": `embeddings` [N_v-1, dim] (main-transformer inputs of calls 1..N_v-1)
      and `cache` int32 [streams, ring] (the token ring after call N_v-1);
    kind "audio": `pcm` float32 [T], 24 kHz mono, already at -24 LUFS, to encode with Mimi;
    kind "codes": `codes` int [8, N_v], Mimi codes of the voice audio.
    """

    kind: str
    name: str
    embeddings: mx.array | None = None
    cache: np.ndarray | None = None
    pcm: np.ndarray | None = None
    codes: np.ndarray | None = None

    def __post_init__(self) -> None:
        required = {"embeddings": ("embeddings", "cache"), "audio": ("pcm",), "codes": ("codes",)}
        if self.kind not in required:
            raise ValueError(f"unknown voice prompt kind {self.kind!r}")
        missing = [f for f in required[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a '{self.kind}' voice prompt needs {', '.join(missing)}")

    @property
    def n_frames(self) -> int:
        """N_v: the number of 80 ms calls the voice-prompt phase spans."""
        if self.kind == "embeddings":
            return self.embeddings.shape[0] + 1
        if self.kind == "codes":
            return self.codes.shape[-1]
        return math.ceil(len(self.pcm) / FRAME_SAMPLES)


# --- ITU-R BS.1770 loudness ---------------------------------------------------------------
# Re-implemented here (about 40 lines) instead of depending on pyloudnorm, which the
# reference uses but pulls in scipy. It mirrors pyloudnorm's `Meter.integrated_loudness`:
# K-weighting as two RBJ biquads designed for the actual sample rate, 400 ms blocks with
# 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU.


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * fc / rate
    alpha, cos = np.sin(w0) / (2 * q), np.cos(w0)
    if kind == "high_shelf":
        s, plus, minus = 2 * np.sqrt(a_gain) * alpha, a_gain + 1, a_gain - 1
        b = a_gain * np.array([plus + minus * cos + s, -2 * (minus + plus * cos), plus + minus * cos - s])
        a = np.array([plus - minus * cos + s, 2 * (minus - plus * cos), plus - minus * cos - s])
    else:  # high_pass
        b = np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2])
        a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    return b / a[0], a / a[0]


def k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting stages (pre-filter shelf, RLB high-pass) as (b, a) pairs."""
    return [_biquad("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0, rate), _biquad("high_pass", 0.0, 0.5, 38.0, rate)]


def iir_filter(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`scipy.signal.lfilter(b, a, x)` for a stable filter, via the FFT.

    Multiplying by the frequency response on an n-point grid is a circular convolution
    with the impulse response folded every n samples; padding by `tail` samples, after
    which the response has decayed below 1e-12, makes that fold negligible.
    """
    radius = float(np.max(np.abs(np.roots(a)))) if len(a) > 1 else 0.0
    tail = 2 * math.ceil(math.log(1e-12) / math.log(radius)) if radius > 0 else len(b)
    n = 1 << max(1, (len(x) + tail - 1).bit_length())
    z = np.exp(-2j * np.pi * np.arange(n // 2 + 1) / n)
    response = np.polyval(b[::-1], z) / np.polyval(a[::-1], z)
    return np.fft.irfft(np.fft.rfft(x, n) * response, n)[: len(x)]


def integrated_loudness(x: np.ndarray, rate: int) -> float:
    """Gated integrated loudness of a mono signal in LUFS (-inf if everything is gated)."""
    block, step = 0.4, 0.25
    if len(x) < block * rate:
        raise AudioError(f"audio of {len(x) / rate:.2f} s is too short to measure its loudness (needs 0.4 s)")
    y = np.asarray(x, dtype=np.float64)
    for b, a in k_weighting(rate):
        y = iir_filter(b, a, y)
    n_blocks = int(np.round((len(y) / rate - block) / (block * step))) + 1
    power = np.array(
        [np.sum(y[int(block * (j * step) * rate) : int(block * (j * step + 1) * rate)] ** 2) for j in range(n_blocks)]
    ) / (block * rate)
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(power)
        gated = power[loudness >= -70.0]
        if gated.size == 0:
            return -math.inf
        relative = -0.691 + 10 * np.log10(gated.mean()) - 10.0
        kept = power[(loudness > relative) & (loudness > -70.0)]
        return float(-0.691 + 10 * np.log10(kept.mean())) if kept.size else -math.inf


def normalize_loudness(x: np.ndarray, rate: int, target: float = TARGET_LUFS) -> np.ndarray:
    """Scale `x` so its integrated loudness is `target` LUFS (no clipping, like the reference)."""
    measured = integrated_loudness(x, rate)
    if not math.isfinite(measured):
        raise AudioError("the voice prompt audio is silent; record a few seconds of clear speech")
    return (np.asarray(x, dtype=np.float64) * 10 ** ((target - measured) / 20)).astype(np.float32)


def load_voice_audio(path: str | Path) -> np.ndarray:
    """Read an audio voice prompt: channel 0, resampled to 24 kHz, normalised to -24 LUFS."""
    path = Path(path)
    try:
        check_sample_rate(soundfile.info(str(path)).samplerate, path)
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise unreadable_audio(path, exc, "voice audio") from None
    if data.shape[0] == 0:
        raise AudioError(f"voice audio {path} contains no samples")
    if data.shape[1] > 1:
        # The reference only uses channel 0 (spec §6.2); say so rather than silently drop audio.
        log.warning("voice audio %s has %d channels; only channel 0 is used", path, data.shape[1])
    mono = data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return normalize_loudness(mono, SAMPLE_RATE)


# --- .pt voices ------------------------------------------------------------------------------


def _voice_from_tensors(tensors: dict[str, Any], name: str, source: Path) -> VoicePrompt:
    hint = "use an official PersonaPlex voice file, or an audio file"
    if not isinstance(tensors, dict) or not {"embeddings", "cache"} <= set(tensors):
        raise CheckpointError(f"voice file {source} must hold 'embeddings' and 'cache'; {hint}")
    emb, cache = tensors["embeddings"], tensors["cache"]
    if emb.ndim == 4 and tuple(emb.shape[1:3]) == (1, 1):
        emb = emb.reshape(emb.shape[0], emb.shape[3])
    if emb.ndim != 2 or emb.shape[0] < 1:
        raise CheckpointError(f"voice file {source}: embeddings have shape {list(emb.shape)}, expected [N, 1, 1, dim]; {hint}")
    cache = np.asarray(cache)
    if cache.ndim == 3 and cache.shape[0] == 1:
        cache = cache[0]
    if cache.ndim != 2 or not np.issubdtype(cache.dtype, np.integer):
        raise CheckpointError(f"voice file {source}: cache has shape {list(cache.shape)}, expected an int [1, 17, 4]; {hint}")
    return VoicePrompt(kind="embeddings", name=name, embeddings=emb, cache=cache.astype(np.int32))


def _converted_path(source: Path, cache_dir: Path) -> Path:
    stat = source.stat()
    identity = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERTED_FORMAT}"
    return cache_dir / f"{source.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.safetensors"


def _save_converted(voice: VoicePrompt, target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target, keep_suffix=True) as tmp:
        mx.save_safetensors(
            str(tmp),
            {"embeddings": voice.embeddings, "cache": mx.array(voice.cache), "n_frames": mx.array([voice.n_frames], dtype=mx.int32)},
            metadata={"format": _CONVERTED_FORMAT, "source": str(source)},
        )


def _load_pt(source: Path, name: str, cache_dir: Path) -> VoicePrompt:
    converted = _converted_path(source, cache_dir)
    if converted.is_file():
        try:
            return _voice_from_tensors(read_safetensors(converted), name, converted)
        except CheckpointError:
            log.warning("re-converting %s: cached copy %s is unusable", source, converted)
    voice = _voice_from_tensors(load_torch_zip(source), name, source)
    try:
        _save_converted(voice, converted, source)
    except OSError as exc:  # a read-only cache only costs the conversion next time
        log.warning("could not cache converted voice %s: %s", converted, exc)
    return voice


# --- lookup ------------------------------------------------------------------------------------


def voice_files(voices_dir: str | Path | None) -> list[Path]:
    """The voice files in `voices_dir` (.pt presets and audio files), sorted."""
    if voices_dir is None or not Path(voices_dir).is_dir():
        return []
    return sorted(p for p in Path(voices_dir).iterdir() if p.is_file() and p.suffix.lower() in (".pt", *AUDIO_EXTENSIONS))


def available_voices(voices_dir: str | Path | None) -> list[str]:
    """Voice names found in `voices_dir` (.pt presets and audio files), sorted."""
    return sorted(p.stem for p in voice_files(voices_dir))


def _find_in_dir(name: str, voices_dir: Path) -> Path | None:
    exact = voices_dir / name
    if exact.is_file():
        return exact
    # Prefer the precomputed .pt over an audio file of the same name: it is what the presets ship as.
    by_stem = {}
    for p in sorted(voices_dir.iterdir()):
        if p.is_file() and p.stem.lower() == Path(name).stem.lower() and p.suffix.lower() in (".pt", *AUDIO_EXTENSIONS):
            by_stem.setdefault(p.suffix.lower() == ".pt", p)
    return by_stem.get(True) or by_stem.get(False)


def load_voice(
    name_or_path: str | Path,
    voices_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    expected_dim: int | None = None,
) -> VoicePrompt:
    """Resolve a voice given as a file path or as a name in `voices_dir` (e.g. "NATF0").

    `.pt` files become kind "embeddings" (converted once into `cache_dir`, default
    `<cache>/voices`); any other file is read as audio (kind "audio"). `expected_dim`
    rejects a `.pt` voice made for a model of another width.
    """
    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "voices"
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        found = _find_in_dir(str(name_or_path), Path(voices_dir)) if voices_dir and Path(voices_dir).is_dir() else None
        if found is None:
            # A path that is not there: say so, not "unknown voice … pass a path to an audio file".
            given = str(name_or_path)
            if path.is_dir():
                raise CheckpointError(f"voice {given} is a folder: give an audio file (about 10 s of clean speech)")
            if "/" in given or "\\" in given or path.suffix.lower() in (".pt", *AUDIO_EXTENSIONS):
                raise CheckpointError(f"voice file {given} not found: check the path (an audio file of about 10 s of clean speech)")
            names = available_voices(voices_dir)
            if not names:  # the demo model, or a model downloaded without its voices
                raise CheckpointError(
                    f"unknown voice '{name_or_path}': this model has no preset voices (the presets "
                    f"{PRESET_VOICES[0]}-{PRESET_VOICES[-1]} come with the real model, `ppchat download`); "
                    "pass a path to an audio file (about 10 s of clean speech), or none"
                )
            raise CheckpointError(
                f"unknown voice '{name_or_path}' in {voices_dir}; available voices: {', '.join(names)}, or a path to an audio file"
            )
        path = found
    name = path.stem
    if path.suffix.lower() == ".pt":
        voice = _load_pt(path, name, cache)
        width = voice.embeddings.shape[1]
        if expected_dim is not None and width != expected_dim:
            raise CheckpointError(
                f"voice {name} ({path}) was made for a model of width {width}, but this model has width "
                f"{expected_dim}; pick a voice made for this model"
            )
        return voice
    return VoicePrompt(kind="audio", name=name, pcm=load_voice_audio(path))
