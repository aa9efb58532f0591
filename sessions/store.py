"""Where sessions live on disk, and listing, finding and loading them.

The default root is `<data dir>/ppchat/sessions`: `$XDG_DATA_HOME/ppchat/sessions`
(`~/.local/share/...`) on Linux, `~/Library/Application Support/ppchat/sessions` on
macOS; `--sessions-dir` overrides it. Listing and loading repair sessions left in
"recording" state by a process that is gone (see `repair`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ppchat.constants import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.errors import SessionError
from ppchat.paths import data_dir
from ppchat.sessions.files import describe_write_error
from ppchat.sessions.jsonl import read_jsonl
from ppchat.sessions.liveness import is_recording_live
from ppchat.sessions.repair import repair_session
from ppchat.sessions.schema import (
    AGENT_WAV,
    SESSION_FILES,
    SESSION_NAME_TIME,
    STEPS_JSONL,
    TRACKS,
    USER_WAV,
    SessionInfo,
    StepLog,
    parse_step_log,
    read_session_info,
)
from ppchat.sessions.user_transcript import UserLine, read_user_transcript
from ppchat.sessions.wav_writer import MAX_FRAMES, read_wav, read_wav_layout

_SESSION_FILES = tuple(f.name for f in SESSION_FILES)
MAX_STEPS = MAX_FRAMES // FRAME_SAMPLES  # what a mono float32 WAV can hold (12.4 h)
CLEANABLE = ("failed", "empty")
_CLEAN_HINT = "`ppchat sessions clean` removes it"


def is_session_dir(path: Path) -> bool:
    """True if `path` is a folder holding at least one session file."""
    return path.is_dir() and any((path / name).exists() for name in _SESSION_FILES)


def nothing_recorded(path: Path) -> bool:
    """True if no track of the session holds a sample and its log holds no step."""
    for name in TRACKS:
        try:
            if read_wav_layout(path / name).available_bytes > 0:
                return False
        except SessionError:
            continue  # missing or not a WAV: nothing usable in it
    try:
        log = path / STEPS_JSONL
        if log.stat().st_size > 65536:
            return False
        return not parse_step_log(read_jsonl(log).records).steps
    except (OSError, SessionError):
        return True


def default_sessions_root() -> Path:
    return data_dir() / "sessions"


def new_session_dir(root: Path, started: datetime) -> Path:
    """Create and return an empty directory `<root>/<started>_<4 hex>`; names sort by start time."""
    root = Path(root)
    hint = "choose another folder with --sessions-dir"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = root / f"{started.strftime(SESSION_NAME_TIME)}_{secrets.token_hex(2)}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise SessionError(f"cannot create a session folder in {root}: {describe_write_error(exc, root)}; {hint}") from exc
    raise SessionError(f"no free session name left in {root} for {started:%Y-%m-%d %H:%M:%S}")


def session_dirs(root: Path) -> list[Path]:
    """The session directories under `root`, oldest first (names sort by start time)."""
    root = Path(root)
    if not root.exists():
        return []
    try:
        candidates = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [p for p in candidates if is_session_dir(p)]
    except OSError as exc:
        raise SessionError(f"cannot list the sessions folder {root}: {exc.strerror or exc}") from exc


def resolve_session(spec: str, root: Path) -> Path:
    """A session directory from a path, `last`, or a unique prefix of a name under `root`."""
    candidate = Path(spec).expanduser()
    if candidate.is_dir():
        return candidate
    dirs = session_dirs(root)
    if spec == "last":
        if not dirs:
            raise SessionError(f"there are no sessions in {root} yet")
        return dirs[-1]
    matches = [p for p in dirs if p.name == spec] or [p for p in dirs if p.name.startswith(spec)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SessionError(
            f"no session {spec!r}: not a folder, and no session name in {root} starts with it; "
            "`ppchat sessions` lists them"
        )
    shown = ", ".join(p.name for p in matches[:4]) + (", ..." if len(matches) > 4 else "")
    raise SessionError(f"{spec!r} matches {len(matches)} sessions ({shown}); type more of the name")


def _label(info: SessionInfo, warnings: list[str], empty: bool = False) -> str:
    """The status shown to people: ok, recovered, partial, live or empty."""
    if info.status == "recording":
        return "live"
    if empty:
        return "empty"
    if info.status == "stopped" or warnings:
        return "partial"
    return "ok" if info.status == "complete" else "recovered"


def _read_info_repairing(path: Path, warnings: list[str]) -> SessionInfo:
    """`session.json`, after repairing the session if its recording process is gone."""
    info = read_session_info(path)
    if info.status != "recording":
        return info
    if is_recording_live(path, info.pid):
        warnings.append(f"still being recorded by process {info.pid}: showing what is on disk so far")
        return info
    repair_session(path)  # what it can't fix, loading reports again
    return read_session_info(path)


@dataclass
class SessionSummary:
    """One row of `ppchat sessions`."""

    name: str
    path: Path
    status: str  # ok | recovered | partial | live | empty | failed | corrupt
    kind: str = ""  # talk | respond | ... (empty when session.json is unreadable)
    started: datetime | None = None
    duration_s: float = 0.0
    voice: str = ""
    role_prompt: str = ""
    mean_ms: float | None = None
    p95_ms: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "status": self.status,
            "kind": self.kind,
            "started": self.started.isoformat(timespec="seconds") if self.started else None,
            "duration_s": self.duration_s,
            "voice": self.voice,
            "role_prompt": self.role_prompt,
            "mean_ms": self.mean_ms,
            "p95_ms": self.p95_ms,
            "warnings": self.warnings,
        }


def list_sessions(root: Path) -> list[SessionSummary]:
    """A summary of every session under `root`, oldest first. A damaged session is listed, not raised."""
    summaries = []
    for path in session_dirs(root):
        warnings: list[str] = []
        try:
            info = _read_info_repairing(path, warnings)
        except SessionError as exc:
            if nothing_recorded(path):
                failed = f"the recording never started: nothing was recorded; {_CLEAN_HINT}"
                summaries.append(SessionSummary(path.name, path, "failed", warnings=[failed]))
            else:
                summaries.append(SessionSummary(path.name, path, "corrupt", warnings=[str(exc)]))
            continue
        empty = info.status != "recording" and info.stats.steps == 0 and nothing_recorded(path)
        if empty:
            warnings.append(f"nothing was recorded (stopped before the first step); {_CLEAN_HINT}")
        else:
            warnings += [f"{f.name} is missing" for f in SESSION_FILES if f.required and not (path / f.name).exists()]
        summaries.append(
            SessionSummary(
                name=path.name,
                path=path,
                status=_label(info, warnings, empty),
                kind=info.meta.kind,
                started=info.started,
                duration_s=info.duration_s,
                voice=info.meta.voice,
                role_prompt=info.meta.role_prompt,
                mean_ms=info.stats.total_ms.get("mean"),
                p95_ms=info.stats.total_ms.get("p95"),
                warnings=warnings,
            )
        )
    return summaries


@dataclass
class Session:
    """A loaded session. Audio tracks are read-only float32 memory maps, frame `n` = step `n`."""

    path: Path
    info: SessionInfo
    steps: list[StepEvent]  # without pcm; see `frame_audio`
    notices: list[tuple[float, NoticeEvent]]  # (audio time, notice)
    user_audio: np.ndarray
    agent_audio: np.ndarray
    warnings: list[str]
    user_lines: list[UserLine] = field(default_factory=list)  # from `ppchat transcribe`; [] when not transcribed

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return _label(self.info, self.warnings)

    @property
    def frames(self) -> int:
        """Length of the aligned timeline in 80 ms frames: the step log or the longer track."""
        last_step = self.steps[-1].step + 1 if self.steps else 0
        return max(last_step, -(-max(len(self.user_audio), len(self.agent_audio)) // FRAME_SAMPLES))

    def frame_audio(self, step: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The (user, agent) samples of `step`, None for a track that ends before it."""
        lo, hi = step * FRAME_SAMPLES, (step + 1) * FRAME_SAMPLES
        return tuple(track[lo:hi] if len(track) >= hi else None for track in (self.user_audio, self.agent_audio))


def load_session(path: Path) -> Session:
    """Load a session; damage that leaves something usable becomes `warnings`, not an error.

    Raises `SessionError` if `path` is not a session or its `session.json` is unusable.
    """
    path = Path(path)
    if not path.is_dir():
        raise SessionError(f"no session folder at {path}")
    if not is_session_dir(path):
        raise SessionError(
            f"{path} is not a ppchat session folder (none of {', '.join(_SESSION_FILES)} is in it); "
            "`ppchat sessions` lists the recorded sessions"
        )
    warnings: list[str] = []
    try:
        info = _read_info_repairing(path, warnings)
    except SessionError:
        if nothing_recorded(path):
            raise SessionError(f"nothing was recorded in {path}: the recording never started; {_CLEAN_HINT}") from None
        raise
    if info.status == "stopped":
        warnings.append(f"the recording stopped early, after {info.duration_s:.2f} s: {info.stop_reason or 'no reason given'}")
    user = _load_track(path / USER_WAV, warnings)
    agent = _load_track(path / AGENT_WAV, warnings)
    log = _load_step_log(path / STEPS_JSONL, warnings, _step_limit(info, user, agent))
    if len(user) != len(agent):
        warnings.append(
            f"{USER_WAV} holds {len(user) / SAMPLE_RATE:.2f} s but {AGENT_WAV} {len(agent) / SAMPLE_RATE:.2f} s; "
            "the shorter one is silent after its end"
        )
    for name, track in ((USER_WAV, user), (AGENT_WAV, agent)):
        if len(track) < log.frames * FRAME_SAMPLES:
            warnings.append(
                f"{name} holds {len(track) / SAMPLE_RATE:.2f} s but the step log {log.frames * FRAME_SECONDS:.2f} s; "
                "the rest of that track is silent"
            )
    user_lines = read_user_transcript(path, warnings)
    return Session(path, info, log.steps, log.notices, user, agent, warnings, user_lines)


def _step_limit(info: SessionInfo, *tracks: np.ndarray) -> int:
    """How many steps the session can hold: its longest track, or what session.json says was
    recorded (tracks can be damaged), never more than a WAV could hold."""
    from_tracks = -(-max(len(t) for t in tracks) // FRAME_SAMPLES)
    from_info = max(info.stats.steps + info.stats.lost_steps, round(info.duration_s / FRAME_SECONDS))
    return min(max(from_tracks, from_info), MAX_STEPS)


def _load_step_log(path: Path, warnings: list[str], limit: int) -> StepLog:
    if not path.exists():
        warnings.append(f"{path.name} is missing: no timings or transcript")
        return StepLog()
    try:
        contents = read_jsonl(path)
    except SessionError as exc:
        warnings.append(str(exc))
        return StepLog()
    if contents.torn:
        warnings.append(f"{path.name} ends with an incomplete line (still being written, or cut by a crash); ignored")
    log = parse_step_log(contents.records, limit)
    damaged = len(contents.bad_lines) + log.bad_records
    if damaged:
        first = f"line {contents.bad_lines[0]} is not a JSON object" if contents.bad_lines else log.first_problem
        warnings.append(f"{path.name}: {damaged} damaged line(s) skipped (first: {first})")
    if log.out_of_range:
        warnings.append(
            f"{path.name}: {log.out_of_range} step line(s) outside the recording (steps 0-{limit - 1}) or out of "
            "order ignored"
        )
    return log


def _load_track(path: Path, warnings: list[str]) -> np.ndarray:
    if not path.exists():
        warnings.append(f"{path.name} is missing: that track is silent")
        return np.zeros(0, dtype=np.float32)
    try:
        track = read_wav(path)
    except SessionError as exc:
        warnings.append(f"{exc}; that track is silent")
        return np.zeros(0, dtype=np.float32)
    if track.ndim != 1:
        warnings.append(f"{path.name} has {track.shape[1]} channels, expected 1; that track is silent")
        return np.zeros(0, dtype=np.float32)
    return track


def remove_session(path: Path) -> list[str]:
    """Delete a session's files (and the temporary files of its atomic writes), then the folder if
    that left it empty. Returns the names of other files, which are kept with the folder."""
    path = Path(path)
    ours = set(_SESSION_FILES)
    for entry in path.iterdir():
        if entry.name in ours or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            try:
                entry.unlink()
            except OSError as exc:
                raise SessionError(f"cannot delete {entry}: {exc.strerror or exc}") from exc
    kept = sorted(p.name for p in path.iterdir())
    if not kept:
        try:
            path.rmdir()
        except OSError as exc:
            raise SessionError(f"cannot delete {path}: {exc.strerror or exc}") from exc
    return kept
