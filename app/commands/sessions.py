"""CLI: `ppchat sessions [--json]`, `ppchat sessions repair S`, `ppchat sessions clean`, `ppchat replay S`,
`ppchat export S`.

S is a session folder, a unique prefix of a session name, or `last`. The session
modules (numpy, memory maps) are imported inside the handlers to keep `ppchat --help`
instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SESSION_HELP = "a session folder, the start of a session name (see `ppchat sessions`), or `last`"
_PROMPT_WIDTH = 40


def register(subparsers: argparse._SubParsersAction) -> None:
    # SUPPRESS keeps a subcommand's missing --sessions-dir from hiding the parent's value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--sessions-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="folder of recorded sessions (default: $XDG_DATA_HOME/ppchat/sessions, i.e. "
        "~/.local/share/ppchat/sessions, on Linux; ~/Library/Application Support/ppchat/sessions on macOS)",
    )

    sessions = subparsers.add_parser(
        "sessions",
        parents=[common],
        help="list recorded conversations",
        description="List recorded conversations: start, length, voice, step latency and status "
        "(ok, recovered after a crash, partial, live, empty, failed, corrupt).",
    )
    sessions.add_argument("--json", action="store_true", help="print the list as JSON")
    sessions.set_defaults(func=list_command)
    actions = sessions.add_subparsers(dest="sessions_action", metavar="ACTION")
    repair = actions.add_parser(
        "repair",
        parents=[common],
        help="fix a session cut off by a crash",
        description="Fix WAV headers, drop a torn last log line and rebuild session.json of a session "
        "whose recording was cut off. Listing and loading do this by themselves for sessions whose "
        "recording process is gone.",
    )
    repair.add_argument("session", help=SESSION_HELP)
    repair.set_defaults(func=repair_command)
    clean = actions.add_parser(
        "clean",
        parents=[common],
        help="delete sessions in which nothing was recorded",
        description="Delete the sessions listed as 'empty' (stopped or killed before the first step) or "
        "'failed' (the recording could not start), after asking. Only session files are deleted: "
        "anything else in such a folder is kept.",
    )
    clean.add_argument("--yes", "-y", action="store_true", help="do not ask (needed without a terminal)")
    clean.set_defaults(func=clean_command)

    replay = subparsers.add_parser(
        "replay",
        parents=[common],
        help="replay a recorded conversation",
        description="Replay a recorded conversation in the console, or print its transcript with --no-tui "
        "(both speakers once `ppchat transcribe` has added the user's words).",
    )
    replay.add_argument("session", help=SESSION_HELP)
    replay.add_argument("--no-tui", action="store_true", help="print the transcript with timestamps instead")
    replay.set_defaults(func=replay_command)

    export = subparsers.add_parser(
        "export",
        parents=[common],
        help="export a session's transcript and audio",
        description="Write <session>.txt (transcript), .srt (subtitles), .wav (stereo: left agent, right user) "
        "and .json (one text entry per 80 ms frame, as the reference offline tool writes).",
    )
    export.add_argument("session", help=SESSION_HELP)
    export.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="output folder (default: .)")
    export.add_argument(
        "--format", default="txt,srt,wav,json", metavar="LIST", help="comma-separated formats (default: txt,srt,wav,json)"
    )
    export.set_defaults(func=export_command)


def _root(args: argparse.Namespace) -> Path:
    from ppchat.sessions.store import default_sessions_root

    return getattr(args, "sessions_dir", None) or default_sessions_root()


def _load(args: argparse.Namespace):
    from ppchat.sessions.store import load_session, resolve_session

    session = load_session(resolve_session(args.session, _root(args)))
    for warning in session.warnings:
        print(f"ppchat: warning: {warning}", file=sys.stderr)
    return session


def list_command(args: argparse.Namespace) -> int:
    from ppchat.engine.transcript import format_clock
    from ppchat.sessions.store import list_sessions

    root = _root(args)
    summaries = list_sessions(root)
    if args.json:
        print(json.dumps([s.to_json() for s in summaries], indent=2, ensure_ascii=False))
        return 0
    if not summaries:
        print(f"no sessions in {root}")
        return 0

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    rows = [("SESSION", "LENGTH", "VOICE", "MEAN ms", "P95 ms", "STATUS", "PROMPT")]
    for s in summaries:
        prompt = " ".join(s.role_prompt.split())
        if len(prompt) > _PROMPT_WIDTH:
            prompt = prompt[: _PROMPT_WIDTH - 1] + "…"
        voice = os.path.basename(s.voice) if os.sep in s.voice else s.voice  # a file: its name (the path made lines wrap)
        rows.append((s.name, format_clock(s.duration_s), voice or "-", ms(s.mean_ms), ms(s.p95_ms), s.status, prompt))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right_aligned = {1, 3, 4}
    for row in rows:
        cells = [
            cell.rjust(w) if i in right_aligned else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    for s in summaries:
        for warning in s.warnings:
            print(f"{s.name}: {warning}")
    return 0


def clean_command(args: argparse.Namespace) -> int:
    from ppchat.errors import PPChatError
    from ppchat.sessions.store import CLEANABLE, list_sessions, remove_session

    root = _root(args)
    doomed = [s for s in list_sessions(root) if s.status in CLEANABLE]
    if not doomed:
        print(f"nothing to clean in {root}")
        return 0
    for s in doomed:
        print(f"{s.name}  {s.status}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise PPChatError("`ppchat sessions clean` asks before deleting; without a terminal, pass --yes")
        print(f"Delete these {len(doomed)} session(s)? [y/N] ", end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    for s in doomed:
        kept = remove_session(s.path)
        print(f"deleted {s.name}" + (f" (kept {', '.join(kept)} and the folder)" if kept else ""))
    return 0


def repair_command(args: argparse.Namespace) -> int:
    from ppchat.sessions.repair import repair_session
    from ppchat.sessions.store import resolve_session

    report = repair_session(resolve_session(args.session, _root(args)))
    for action in report.actions:
        print(action)
    if not report.actions:
        print(f"{report.path.name}: nothing to repair")
    for problem in report.problems:
        print(f"ppchat: cannot fix: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def replay_command(args: argparse.Namespace) -> int:
    session = _load(args)
    if args.no_tui:
        from ppchat.sessions.dialogue import format_dialogue

        text = format_dialogue(session)
        if not text:
            text = "(nobody said anything in this session)\n" if session.user_lines else (
                f"(the agent said nothing in this session; `ppchat transcribe {session.name}` adds the user's words)\n")
        print(text, end="")
        return 0
    from ppchat.tui.replay import run_replay

    return int(run_replay(session) or 0)


def export_command(args: argparse.Namespace) -> int:
    from ppchat.sessions.export import export

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    for path in export(_load(args), args.out, formats):
        print(path)
    return 0
