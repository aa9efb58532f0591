"""Repair a session left behind by a crash (or damaged later).

What it does, in order:
1. WAV headers whose sizes disagree with the file length are set from the length
   (cut to whole sample frames): everything flushed, and anything after, is kept.
2. A torn last line of `steps.jsonl` (no newline: cut by a crash) is removed.
3. A `session.json` still saying "recording", or missing, or unreadable, is rebuilt:
   duration and stats from `steps.jsonl`, status "recovered". What only the old
   file knew (voice, prompt, model) is kept when it was readable.

`list_sessions` and `load_session` call it for sessions whose recording process is
gone; it refuses to touch a session that is still being recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ppchat.constants import FRAME_SECONDS
from ppchat.errors import SessionError
from ppchat.sessions.jsonl import read_jsonl
from ppchat.sessions.liveness import is_recording_live
from ppchat.sessions.schema import (
    AGENT_WAV,
    SESSION_JSON,
    SESSION_NAME_TIME,
    STEPS_JSONL,
    USER_WAV,
    SessionInfo,
    SessionMeta,
    StepLog,
    parse_step_log,
    read_session_info,
    write_session_info,
)
from ppchat.sessions.stats import stats_from_log
from ppchat.sessions.wav_writer import read_wav_layout, repair_wav


@dataclass
class RepairReport:
    """What `repair_session` changed (`actions`) and what it could not fix (`problems`)."""

    path: Path
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def repair_session(path: Path) -> RepairReport:
    """Repair the session at `path` in place. Raises `SessionError` if it isn't a session or is live."""
    path = Path(path)
    names = (SESSION_JSON, STEPS_JSONL, USER_WAV, AGENT_WAV)
    if not path.is_dir() or not any((path / name).exists() for name in names):
        raise SessionError(f"{path} is not a ppchat session directory (none of {', '.join(names)} is there)")
    report = RepairReport(path)
    try:
        info: SessionInfo | None = read_session_info(path)
    except SessionError as exc:
        info, unreadable = None, str(exc)
    if info is not None and info.status == "recording" and is_recording_live(path, info.pid):
        raise SessionError(f"{path} is still being recorded by process {info.pid}; end that conversation first")

    for name in (USER_WAV, AGENT_WAV):
        _repair_track(path / name, report)

    steps_path = path / STEPS_JSONL
    log = StepLog()
    if steps_path.exists():
        contents = read_jsonl(steps_path)
        if contents.torn:
            _truncate(steps_path, contents.complete_bytes)
            report.actions.append(f"{STEPS_JSONL}: removed the incomplete last line")
        if contents.bad_lines:
            report.problems.append(f"{STEPS_JSONL}: {len(contents.bad_lines)} damaged line(s) skipped on load")
        log = parse_step_log(contents.records)
    else:
        report.problems.append(f"{STEPS_JSONL} is missing: no timings or transcript")

    if info is None or info.status == "recording":
        if info is None:
            info = SessionInfo(meta=SessionMeta(ppchat_version=""), started=_started_from_name(path))
            report.actions.append(f"{SESSION_JSON}: rebuilt without model, voice and prompt ({unreadable})")
        info.status = "recovered"
        info.duration_s = log.frames * FRAME_SECONDS
        info.stats = stats_from_log(log.steps, log.lost_steps)
        write_session_info(path, info)
        report.actions.append(f"{SESSION_JSON}: marked recovered, {log.frames} steps ({info.duration_s:.1f} s)")
    return report


def _repair_track(wav: Path, report: RepairReport) -> None:
    if not wav.exists():
        report.problems.append(f"{wav.name} is missing: that track is silent")
        return
    try:
        if repair_wav(wav):
            layout = read_wav_layout(wav)
            seconds = layout.data_bytes / layout.block_align / max(layout.sample_rate, 1)
            report.actions.append(f"{wav.name}: header fixed, {seconds:.2f} s of audio")
    except SessionError as exc:
        report.problems.append(str(exc))


def _truncate(path: Path, length: int) -> None:
    try:
        with open(path, "r+b") as f:
            f.truncate(length)
    except OSError as exc:
        raise SessionError(f"cannot repair {path}: {exc.strerror or exc}") from exc


def _started_from_name(path: Path) -> datetime:
    """The start time encoded in the directory name, else the directory's modification time."""
    try:
        return datetime.strptime(path.name[:19], SESSION_NAME_TIME).astimezone()
    except ValueError:
        return datetime.fromtimestamp(path.stat().st_mtime).astimezone()
