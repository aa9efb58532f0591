"""`ppchat transcribe S` (the user's words of a recorded session, with Qwen3-ASR)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_asr_model_argument(p: argparse.ArgumentParser) -> None:
    from ppchat.asr.model_files import ASR_MODEL_HELP

    p.add_argument("--asr-model", default=None, metavar="MODEL", help=ASR_MODEL_HELP)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe the user's side of a session (Qwen3-ASR)",
        description="Transcribe a recorded session's user.wav (the microphone as the model heard it) with "
        "Qwen3-ASR into timed segments, stored as user_transcript.json in the session folder; `ppchat export` "
        "and `ppchat replay` then show both speakers. Runs again from scratch when repeated. The ASR model "
        "must be downloaded first: `ppchat download --asr`.",
    )
    p.add_argument("session", help="a session folder, the start of a session name (see `ppchat sessions`), or `last`")
    add_asr_model_argument(p)
    p.add_argument("--language", default=None, help="force the language (e.g. English, de); default: detected")
    p.add_argument("--sessions-dir", type=Path, default=None, metavar="DIR", help="folder of recorded sessions")
    p.set_defaults(func=cmd_transcribe)


def cmd_transcribe(args) -> int:
    from ppchat.asr.model_files import DEFAULT_ASR_MODEL, resolve_asr_model
    from ppchat.asr.transcriber import Transcriber, transcribe_track
    from ppchat.errors import SessionError
    from ppchat.sessions.store import default_sessions_root, load_session, resolve_session
    from ppchat.sessions.user_transcript import write_user_transcript

    session = load_session(resolve_session(args.session, args.sessions_dir or default_sessions_root()))
    for warning in session.warnings:
        print(f"ppchat: warning: {warning}", file=sys.stderr)
    if not len(session.user_audio):
        raise SessionError(f"{session.path} has no user audio (user.wav is missing, empty or unreadable): nothing to transcribe")
    folder = resolve_asr_model(args.asr_model)  # before the slow part: a missing model fails at once
    transcriber = Transcriber(folder, language=args.language)

    def progress(done_s: float, total_s: float, found: int) -> None:
        print(f"\rppchat: transcribing: {done_s:.0f} of {total_s:.0f} s, {found} utterance(s)", end="", file=sys.stderr, flush=True)

    segments = transcribe_track(session.user_audio, transcriber, progress=progress)
    print(file=sys.stderr)
    path = write_user_transcript(session.path, segments, model=args.asr_model or DEFAULT_ASR_MODEL, language=args.language)
    words = sum(len(s.text.split()) for s in segments)
    print(f"ppchat: {len(segments)} utterance(s), {words} word(s) in {path}")
    print(f"ppchat: `ppchat export {session.name}` writes both sides")
    return 0
