"""Export a session for other tools.

* `txt`: the transcript, one `[mm:ss.t] text` line per utterance; once `ppchat transcribe`
  has added the user's words, both sides interleaved by time as `Agent: ...`/`User: ...`.
* `srt`: the same lines as subtitles.
* `wav`: one stereo 24 kHz float32 WAV, left = agent, right = user (as the PersonaPlex
  web client records).
* `json`: `{"text": [...], "dialogue": [...]}`. `text` is the reference offline tool's
  text output (spec §7.2), as in `respond --text-json`: one string per 80 ms frame, the
  piece with `▁` as a space, "EPAD" (token 0) or "PAD" (token 3, and frames without a
  recorded token). `dialogue` holds both sides' lines in time order:
  `{"speaker": "agent"|"user", "start": s, "end": s, "text": ...}`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from ppchat.errors import SessionError
from ppchat.sessions.dialogue import dialogue, format_dialogue, has_user_side, line_text
from ppchat.sessions.files import atomic_write_bytes, describe_write_error
from ppchat.sessions.replay import EPAD_TOKEN, PAD_TOKEN, WORD_START
from ppchat.sessions.schema import FRAME_SAMPLES, SAMPLE_RATE
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


def _srt(session: Session) -> str:
    labelled = has_user_side(session)
    cues = enumerate(dialogue(session), start=1)
    return "".join(
        f"{i}\n{_srt_time(line.start)} --> {_srt_time(line.end)}\n{line_text(line, labelled)}\n\n" for i, line in cues
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
        if event.text_token == EPAD_TOKEN:
            frames[event.step] = "EPAD"
        elif (event.text_token is not None or event.text_piece) and event.text_token != PAD_TOKEN:
            frames[event.step] = (event.text_piece or "").replace(WORD_START, " ")
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        tmp.unlink()  # left over from an export that was killed
    length = session.frames * FRAME_SAMPLES
    writer = WavWriter(tmp, channels=2, sample_rate=SAMPLE_RATE)
    done = False
    try:
        for lo in range(0, length, _CHUNK_SAMPLES):
            hi = min(lo + _CHUNK_SAMPLES, length)
            writer.append(np.stack([_padded(session.agent_audio, lo, hi), _padded(session.user_audio, lo, hi)], axis=1))
            writer.flush()
        writer.close()
        os.replace(tmp, path)
        done = True
    except OSError as exc:
        raise SessionError(describe_write_error(exc, path)) from exc
    finally:
        if not done:
            writer.abandon()
            with contextlib.suppress(OSError):
                tmp.unlink()


def _padded(track: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """track[lo:hi], zero-padded where the track is shorter."""
    out = np.zeros(hi - lo, dtype=np.float32)
    part = track[lo:hi]
    out[: len(part)] = part
    return out
