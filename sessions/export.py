"""Export a session for other tools.

* `txt`: the transcript, one `[mm:ss.t] text` line per utterance; once `ppchat transcribe`
  has added the user's words, both sides interleaved by time as `Agent: ...`/`User: ...`.
* `srt`: the same words as subtitles: a cue ends at a pause of `SRT_PAUSE_S`, and holds at
  most `SRT_MAX_SECONDS` and two lines of `SRT_LINE_CHARS` characters (agent words are
  timed by their steps; a user line's words share its time in proportion to their length).
* `wav`: one stereo 24 kHz float32 WAV, left = agent, right = user (as the PersonaPlex
  web client records).
* `json`: `{"text": [...], "dialogue": [...]}`. `text` is the reference offline tool's
  text output (spec §7.2), as in `respond --text-json`: one string per 80 ms frame, the
  piece with `▁` as a space, "EPAD" (token 0) or "PAD" (token 3, and frames without a
  recorded token). `dialogue` holds both sides' lines in time order:
  `{"speaker": "agent"|"user", "start": s, "end": s, "text": ...}`.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ppchat.atomic import replacing
from ppchat.constants import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE
from ppchat.engine.transcript import piece_text, reference_text_entry
from ppchat.errors import SessionError
from ppchat.sessions.dialogue import AGENT, LABELS, dialogue, format_dialogue, has_user_side
from ppchat.sessions.files import atomic_write_bytes, describe_write_error
from ppchat.sessions.store import Session
from ppchat.sessions.wav_writer import WavWriter

FORMATS = ("txt", "srt", "wav", "json")
_CHUNK_SAMPLES = 10 * SAMPLE_RATE  # interleave long sessions piecewise, not all at once


def export(session: Session, out_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write `<out_dir>/<session name>.<format>` for each format; returns the paths written.

    Existing files of the same name are replaced atomically.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise SessionError(f"unknown export format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SessionError(describe_write_error(exc, out_dir)) from exc
    written = []
    for fmt in formats:
        path = out_dir / f"{session.name}.{fmt}"
        if fmt == "wav":
            _write_stereo_wav(session, path)
        else:
            atomic_write_bytes(path, _TEXT_EXPORTS[fmt](session).encode("utf-8"))
        written.append(path)
    return written


def _txt(session: Session) -> str:
    return format_dialogue(session)


SRT_PAUSE_S = 0.5
SRT_MAX_SECONDS = 7.0
SRT_LINE_CHARS = 42
SRT_MAX_LINES = 2


class _Word(NamedTuple):
    start: float
    end: float
    text: str


def _agent_words(session: Session) -> list[_Word]:
    """The agent's words with the times of their steps (a piece without `▁` continues a word)."""
    words: list[_Word] = []
    new_word = True
    for event in session.steps:
        text = piece_text(event)
        if text is None:
            continue
        start, end = event.step * FRAME_SECONDS, (event.step + 1) * FRAME_SECONDS
        if text.startswith(" ") or text.isspace():
            new_word = True
        for i, part in enumerate(text.split()):
            if words and not new_word and i == 0 and start - words[-1].end < SRT_PAUSE_S:
                words[-1] = _Word(words[-1].start, end, words[-1].text + part)
            else:
                words.append(_Word(start, end, part))
            new_word = False
        if text.endswith(" "):
            new_word = True
    return words


def _line_words(start: float, end: float, text: str) -> list[_Word]:
    """A timed line's words, sharing its time in proportion to their length."""
    parts = text.split()
    total = sum(len(p) + 1 for p in parts) or 1
    words, at = [], 0
    for part in parts:
        t0 = start + (end - start) * at / total
        at += len(part) + 1
        words.append(_Word(t0, start + (end - start) * at / total, part))
    return words


def _wrap(text: str) -> list[str] | None:
    """`text` in lines of at most `SRT_LINE_CHARS` (a longer word gets a line of its own); None if
    that takes more than `SRT_MAX_LINES`."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= SRT_LINE_CHARS:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines if len(lines) <= SRT_MAX_LINES else None


def subtitle_cues(words: list[_Word], label: str = "") -> list[tuple[float, float, list[str]]]:
    """Group words into cues (start, end, lines); see the module docstring for the limits."""
    groups: list[list[_Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if (
            current is None
            or word.start - current[-1].end >= SRT_PAUSE_S
            or word.end - current[0].start > SRT_MAX_SECONDS
            or _wrap(label + " ".join(w.text for w in [*current, word])) is None
        ):
            groups.append([word])
        else:
            current.append(word)
    # A group is one word, or words that were checked to fit: _wrap never gives None here.
    return [(g[0].start, g[-1].end, _wrap(label + " ".join(w.text for w in g))) for g in groups]


def _srt(session: Session) -> str:
    labelled = has_user_side(session)
    agent_words = _agent_words(session)
    cues = []
    for line in dialogue(session):
        label = f"{LABELS[line.speaker]}: " if labelled else ""
        if line.speaker == AGENT:
            lo = bisect.bisect_left(agent_words, line.start - 1e-9, key=lambda w: w.start)
            hi = bisect.bisect_left(agent_words, line.end - 1e-9, key=lambda w: w.start)
            words = agent_words[lo:hi]
        else:
            words = _line_words(line.start, line.end, line.text)
        cues += subtitle_cues(words, label)
    cues.sort(key=lambda cue: cue[:2])
    return "".join(
        f"{i}\n{_srt_time(start)} --> {_srt_time(end)}\n" + "\n".join(lines) + "\n\n"
        for i, (start, end, lines) in enumerate(cues, start=1)
    )


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def offline_text_frames(session: Session) -> list[str]:
    """One string per frame of the session timeline, as the reference offline tool writes it."""
    frames = ["PAD"] * session.frames
    for event in session.steps:
        frames[event.step] = reference_text_entry(event.text_token, event.text_piece)
    return frames


def _json(session: Session) -> str:
    lines = [
        {"speaker": line.speaker, "start": round(line.start, 3), "end": round(line.end, 3), "text": line.text}
        for line in dialogue(session)
    ]
    return json.dumps({"text": offline_text_frames(session), "dialogue": lines}, ensure_ascii=False)


_TEXT_EXPORTS = {"txt": _txt, "srt": _srt, "json": _json}


def _write_stereo_wav(session: Session, path: Path) -> None:
    # Written beside the target and renamed, so a failed export never leaves half a file.
    length = session.frames * FRAME_SAMPLES
    try:
        with replacing(path) as tmp:
            writer = WavWriter(tmp, channels=2, sample_rate=SAMPLE_RATE)
            try:
                for lo in range(0, length, _CHUNK_SAMPLES):
                    hi = min(lo + _CHUNK_SAMPLES, length)
                    writer.append(np.stack([_padded(session.agent_audio, lo, hi), _padded(session.user_audio, lo, hi)], axis=1))
                    writer.flush()
                writer.close()
            except BaseException:
                writer.abandon()
                raise
    except OSError as exc:
        raise SessionError(describe_write_error(exc, path)) from exc


def _padded(track: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """track[lo:hi], zero-padded where the track is shorter."""
    out = np.zeros(hi - lo, dtype=np.float32)
    part = track[lo:hi]
    out[: len(part)] = part
    return out
