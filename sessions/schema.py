"""The on-disk format of a recorded session: the one owner of every file, field and record.

A session is a folder named `YYYY-MM-DDTHH-MM-SS_xxxx` (local start time plus four random
hex digits). Its files are listed in `SESSION_FILES`; `session.json`'s fields in
`SESSION_FIELDS` (with `STATS_FIELDS`), a step line's in `STEP_FIELDS`. These tables are
what the recorder writes (`SessionInfo.to_json`, `step_record`, `notice_record`,
`gap_record`) and what loading checks (`SessionInfo.from_json`, `parse_step_record`): a
value of the wrong type makes the session `corrupt` (session.json) or skips the line
(steps.jsonl), with a message naming the file and the field, never a traceback later on.

README.md's "Session folder format" section documents the same tables with a real example;
`tests/test_sessions_schema.py` checks it against what a recording actually writes.

Adding to the format: a new optional file is one `SessionFile` entry (an extra aligned
track is `role="track", required=False`, and repair and clean handle it by themselves); a
new kind of session is one name in `KINDS`; a new optional field is one `SESSION_FIELDS`
entry with its default. Readers ignore keys they do not know, so older ppchat versions
can read newer sessions of the same `format_version`.

Alignment: live step `n` is samples `[n * 1920, (n + 1) * 1920)` of every track (80 ms
frames at 24 kHz); steps the recorder never received are silence in every track and a
`gap` line in the log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from ppchat import __version__
from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.errors import SessionError
from ppchat.sessions.files import atomic_write_bytes
from ppchat.sessions.user_transcript import USER_TRANSCRIPT

# 2: mic.wav (the raw microphone, with echo cancellation) and the step fields aec and erle.
# Version 1 sessions have neither and load unchanged.
FORMAT_VERSION = 2

USER_WAV = "user.wav"
AGENT_WAV = "agent.wav"
MIC_WAV = "mic.wav"
STEPS_JSONL = "steps.jsonl"
SESSION_JSON = "session.json"
SESSION_NAME_TIME = "%Y-%m-%dT%H-%M-%S"  # folder names: this, "_", four hex digits

STATUSES = ("recording", "complete", "stopped", "recovered")
# What produced it: a live conversation, `ppchat respond`, `ppchat serve` (a network client's
# conversation), `ppchat talk --server` (this console, the model on a server).
KINDS = ("talk", "respond", "served", "remote")
FILLED = ("user", "agent", "both")


@dataclass(frozen=True)
class SessionFile:
    """One file a session folder may hold."""

    name: str
    role: str  # "meta" (session.json), "log" (steps.jsonl), "track" (a WAV aligned with the steps) or "other"
    required: bool  # written by every recording; missing = damaged
    doc: str


SESSION_FILES = (
    SessionFile(USER_WAV, "track", True, "The microphone as the model heard it: mono, 24 kHz, 32-bit float WAV"),
    SessionFile(AGENT_WAV, "track", True, "The model's audio: same format"),
    SessionFile(MIC_WAV, "track", False, "With echo cancellation: the raw microphone, aligned with user.wav (what was removed is "
                "the difference); same format"),
    SessionFile(STEPS_JSONL, "log", True, "JSON Lines: one line per step, plus notices and gaps"),
    SessionFile(SESSION_JSON, "meta", True, "Settings and summary"),
    SessionFile(USER_TRANSCRIPT, "other", False, "Optional: the user's words, written by `ppchat transcribe`"),
)
TRACKS = tuple(f.name for f in SESSION_FILES if f.role == "track")


# --- value checks: each returns the value (normalised) or raises _Invalid -------------------


class _Invalid(ValueError):
    """A value that does not fit the schema; the message names the field."""


Check = Callable[[Any, str], Any]


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(minimum: int | None = 0) -> Check:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"'{where}' should be a whole number, not {_show(value)}")
        if minimum is not None and value < minimum:
            raise _Invalid(f"'{where}' should be at least {minimum}, not {value}")
        return value

    return check


def _number(minimum: float | None = None) -> Check:
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid(f"'{where}' should be a number, not {_show(value)}")
        if minimum is not None and value < minimum:
            raise _Invalid(f"'{where}' should be at least {minimum}, not {value}")
        return float(value)

    return check


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"'{where}' should be a string, not {_show(value)}")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"'{where}' should be true or false, not {_show(value)}")
    return value


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            raise _Invalid(f"'{where}' should be one of {', '.join(choices)}, not {_show(value)}")
        return value

    return check


def _optional(check: Check) -> Check:
    return lambda value, where: None if value is None else check(value, where)


def _object_of(check: Check) -> Check:
    def check_object(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(f"'{where}' should be an object, not {_show(value)}")
        return {key: check(item, f"{where}.{key}") for key, item in value.items()}

    return check_object


def _scalar(value: Any, where: str) -> Any:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise _Invalid(f"'{where}' should be a number, string, boolean or null, not {_show(value)}")
    return value


def _timestamp(value: Any, where: str) -> datetime:
    try:
        return datetime.fromisoformat(_string(value, where))
    except ValueError:
        raise _Invalid(f"'{where}' should be an ISO 8601 time, not {_show(value)}") from None


def _exactly(expected: int) -> Check:
    def check(value: Any, where: str) -> int:
        if _integer()(value, where) != expected:
            raise _Invalid(f"'{where}' must be {expected}, not {value}")
        return value

    return check


REQUIRED = object()  # a field without a default


@dataclass(frozen=True)
class Field:
    check: Check
    default: Any
    doc: str


def _validate(d: Any, table: dict[str, Field], where: str = "") -> dict[str, Any]:
    """Checked and normalised values of every field of `table` (defaults for absent optional ones)."""
    if not isinstance(d, dict):
        raise _Invalid(f"'{where}' should be an object, not {_show(d)}" if where else "it does not hold a JSON object")
    out = {}
    for name, spec in table.items():
        key = f"{where}.{name}" if where else name
        if name not in d:
            if spec.default is REQUIRED:
                raise _Invalid(f"the field '{key}' is missing")
            out[name] = spec.default() if callable(spec.default) else spec.default
        else:
            out[name] = spec.check(d[name], key)
    return out


# --- session.json ----------------------------------------------------------------------------

STATS_FIELDS: dict[str, Field] = {
    "steps": Field(_integer(), 0, "steps recorded"),
    "total_ms": Field(_object_of(_number()), dict, "step compute time: mean, p50, p95, p99, max (within 0.2 %)"),
    "late_frames": Field(_integer(), 0, "steps over the 80 ms budget"),
    "dropped_frames": Field(_integer(), 0, "microphone frames dropped by the catch-up policy"),
    "underruns": Field(_integer(), 0, "speaker callbacks that found no audio"),
    "xruns": Field(_integer(), 0, "PortAudio status flags while the stream ran"),
    "filled_frames": Field(_integer(), 0, "steps where silence stands in for missing audio"),
    "lost_steps": Field(_integer(), 0, "steps that never reached the recorder (gaps)"),
}

SESSION_FIELDS: dict[str, Field] = {
    "format_version": Field(_integer(), REQUIRED, f"{FORMAT_VERSION}"),
    "kind": Field(_one_of(KINDS), "talk", " | ".join(KINDS)),
    "status": Field(_one_of(STATUSES), REQUIRED, " | ".join(STATUSES)),
    "stop_reason": Field(_optional(_string), None, "why a 'stopped' recording ended early"),
    "model_id": Field(_string, "", "the model: a Hugging Face repo id, a folder, or 'demo'"),
    "quantization": Field(lambda v, w: "none" if v is None else _string(v, w), "none", "none | q4 | q8"),
    "voice": Field(_string, "", "voice preset or file"),
    "role_prompt": Field(_string, "", "the role prompt's text"),
    "sampling": Field(_object_of(_scalar), dict, "the sampling settings, seed included (null = not seeded)"),
    "devices": Field(_object_of(_scalar), dict, "the audio devices' names"),
    "ppchat_version": Field(_string, "", "the version that recorded it"),
    "client": Field(_optional(_string), None, "kind served: the network client's address"),
    "server": Field(_optional(_string), None, "kind remote: the server's websocket address"),
    "started": Field(_timestamp, REQUIRED, "local start time, ISO 8601"),
    "pid": Field(_optional(_integer(minimum=1)), None, "the recording process"),
    "sample_rate": Field(_exactly(SAMPLE_RATE), SAMPLE_RATE, "of every track"),
    "frame_samples": Field(_exactly(FRAME_SAMPLES), FRAME_SAMPLES, "samples per step"),
    "duration_s": Field(_number(minimum=0), 0.0, "audio recorded"),
    "stats": Field(lambda v, w: _validate(v, STATS_FIELDS, w), dict, "see STATS_FIELDS"),
}


@dataclass
class SessionMeta:
    """What the caller knows about a conversation when recording starts."""

    kind: str = "talk"
    model_id: str = ""
    quantization: str = "none"
    voice: str = ""
    role_prompt: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    ppchat_version: str = __version__
    client: str | None = None  # kind "served": the network client's address
    server: str | None = None  # kind "remote": the server's websocket address


@dataclass
class StepStats:
    """Latency and glitch totals over the recorded steps."""

    steps: int = 0
    total_ms: dict[str, float] = field(default_factory=dict)  # mean, p50, p95, p99, max (empty without steps)
    late_frames: int = 0
    dropped_frames: int = 0
    underruns: int = 0
    xruns: int = 0
    filled_frames: int = 0
    lost_steps: int = 0


@dataclass
class SessionInfo:
    """The contents of `session.json`."""

    meta: SessionMeta
    started: datetime
    status: str = "recording"
    pid: int | None = None
    duration_s: float = 0.0
    stats: StepStats = field(default_factory=StepStats)
    stop_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        meta = asdict(self.meta)
        d = {
            "format_version": FORMAT_VERSION,
            "kind": meta.pop("kind"),
            "status": self.status,
            "stop_reason": self.stop_reason,
            **meta,
            "started": self.started.isoformat(timespec="milliseconds"),
            "pid": self.pid,
            "sample_rate": SAMPLE_RATE,
            "frame_samples": FRAME_SAMPLES,
            "duration_s": round(self.duration_s, 3),
            "stats": asdict(self.stats),
        }
        assert d.keys() == SESSION_FIELDS.keys(), "SESSION_FIELDS must describe what is written"
        return d

    @classmethod
    def from_json(cls, d: Any, source: Path) -> SessionInfo:
        """Check every field against `SESSION_FIELDS`; `SessionError` names `source` and the bad field."""
        if isinstance(d, dict):
            version = d.get("format_version")
            if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
                raise SessionError(f"{source} uses session format {version}; upgrade ppchat to read it")
            if "format_version" not in d:
                raise SessionError(f"{source} has no format_version; it is not a ppchat session file")
        try:
            v = _validate(d, SESSION_FIELDS)
        except _Invalid as exc:
            raise SessionError(f"{source} is damaged: {exc}") from None
        meta = SessionMeta(**{f.name: v[f.name] for f in fields(SessionMeta)})
        return cls(
            meta=meta,
            started=v["started"],
            status=v["status"],
            pid=v["pid"],
            duration_s=v["duration_s"],
            stats=StepStats(**v["stats"]),
            stop_reason=v["stop_reason"],
        )


def write_session_info(session_dir: Path, info: SessionInfo) -> None:
    """Atomically replace `session.json`. Raises `RecordingStopped` if it can't be written."""
    text = json.dumps(info.to_json(), ensure_ascii=False, indent=2) + "\n"
    atomic_write_bytes(Path(session_dir) / SESSION_JSON, text.encode("utf-8"))


def read_session_info(session_dir: Path) -> SessionInfo:
    """Read and validate `session.json`; `SessionError` says what is wrong and how to fix it."""
    path = Path(session_dir) / SESSION_JSON
    hint = f"`ppchat sessions repair {session_dir}` rebuilds it from {STEPS_JSONL}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise SessionError(f"{path} is missing; {hint}") from exc
    except OSError as exc:
        raise SessionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SessionError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    try:
        return SessionInfo.from_json(data, path)
    except SessionError as exc:
        raise SessionError(f"{exc}; {hint} (the voice, prompt and model it names are lost)") from None


# --- steps.jsonl records -----------------------------------------------------------------------

# A step line: key -> (StepEvent attribute, check, written only when set).
STEP_FIELDS: dict[str, tuple[str, Check, bool]] = {
    "step": ("step", _integer(), False),
    "t": ("audio_time", _number(), False),
    "wall": ("wall_time", _number(), False),
    "ms": ("timings_ms", _object_of(_number()), False),
    "in_rms": ("in_rms", _number(), False),
    "in_peak": ("in_peak", _number(), False),
    "out_rms": ("out_rms", _number(), False),
    "out_peak": ("out_peak", _number(), False),
    "queue_in": ("queue_in", _integer(), False),
    "queue_out": ("queue_out", _integer(), False),
    "token": ("text_token", _integer(), True),
    "piece": ("text_piece", _optional(_string), True),
    "late": ("late", _boolean, True),
    "marked": ("marked", _boolean, True),
    "dropped_in": ("dropped_in", _integer(), True),
    "underruns": ("underruns", _integer(), True),
    "xruns": ("xruns", _integer(), True),
    "filled": ("filled", _one_of(FILLED), True),
    "aec": ("aec", _boolean, True),  # the model heard the echo-cancelled microphone
    "erle": ("erle_db", _number(), True),  # the live ERLE estimate, dB
}
_STEP_REQUIRED = ("step", "t")
_ROUNDING = {"t": 3, "wall": 6, "in_rms": 5, "in_peak": 5, "out_rms": 5, "out_peak": 5, "erle": 1}


def step_record(event: StepEvent) -> dict[str, Any]:
    """The `steps.jsonl` line of a step (no audio): fields in `STEP_FIELDS` order, optional ones when set."""
    d: dict[str, Any] = {}
    for key, (attr, _, optional) in STEP_FIELDS.items():
        value = getattr(event, attr)
        if key in ("token", "piece"):
            # A piece alone: text from a server that sends its pieces but not their token ids.
            if event.text_token is None and (key == "token" or event.text_piece is None):
                continue
        elif optional and not value:
            continue
        if key == "ms":
            value = {k: round(v, 3) for k, v in value.items()}
        elif key in _ROUNDING:
            value = round(value, _ROUNDING[key])
        d[key] = value
    return d


def parse_step_record(d: dict[str, Any]) -> StepEvent:
    """A step line back into a `StepEvent` (without audio). Raises `ValueError` naming the bad field."""
    for key in _STEP_REQUIRED:
        if key not in d:
            raise _Invalid(f"the field '{key}' is missing")
    values = {attr: check(d[key], key) for key, (attr, check, _) in STEP_FIELDS.items() if key in d and d[key] is not None}
    values.setdefault("wall_time", 0.0)
    values.setdefault("timings_ms", {})
    return StepEvent(**values)


def notice_record(t: float, notice: NoticeEvent) -> dict[str, Any]:
    """`{"kind": "notice", ...}`: a message shown to the user; `t` is the audio time of the next step."""
    return {"kind": "notice", "t": round(t, 3), "level": notice.level, "message": notice.message, "wall": notice.wall_time}


def gap_record(step: int, count: int) -> dict[str, Any]:
    """`{"kind": "gap", ...}`: `count` steps from `step` on never reached the recorder; silence in every track."""
    return {"kind": "gap", "step": step, "count": count}


_NOTICE_FIELDS = {
    "t": Field(_number(minimum=0), REQUIRED, ""),
    "level": Field(_one_of(("info", "warning", "error")), REQUIRED, ""),
    "message": Field(_string, REQUIRED, ""),
    "wall": Field(_number(), 0.0, ""),
}
_GAP_FIELDS = {"step": Field(_integer(), REQUIRED, ""), "count": Field(_integer(minimum=1), REQUIRED, "")}


@dataclass
class StepLog:
    """The parsed contents of `steps.jsonl`."""

    steps: list[StepEvent] = field(default_factory=list)
    notices: list[tuple[float, NoticeEvent]] = field(default_factory=list)  # (audio time, notice)
    lost_steps: int = 0
    bad_records: int = 0  # JSON objects that don't fit the schema
    first_problem: str = ""  # what was wrong with the first of them
    out_of_range: int = 0  # steps outside [0, limit) (see `parse_step_log`)

    @property
    def frames(self) -> int:
        """Length of the aligned timeline: one past the last step."""
        return self.steps[-1].step + 1 if self.steps else 0


def parse_step_log(records: list[dict[str, Any]], limit: int | None = None) -> StepLog:
    """Check and sort out `steps.jsonl`'s records. With `limit`, steps must lie in `[0, limit)`
    and come in increasing order; the others are counted in `out_of_range` and dropped, so a
    crafted line can't make an export allocate or write more than the recording holds."""
    log = StepLog()

    def bad(problem: str) -> None:
        log.bad_records += 1
        log.first_problem = log.first_problem or problem

    last = -1
    for number, record in enumerate(records, start=1):
        try:
            kind = record.get("kind")
            if kind is None:
                event = parse_step_record(record)
                if limit is not None and not (last < event.step < limit):
                    log.out_of_range += 1
                    continue
                last = event.step
                log.steps.append(event)
            elif kind == "notice":
                v = _validate(record, _NOTICE_FIELDS)
                log.notices.append((v["t"], NoticeEvent(v["level"], v["message"], v["wall"])))
            elif kind == "gap":
                log.lost_steps += _validate(record, _GAP_FIELDS)["count"]
            else:
                bad(f"record {number}: unknown kind {_show(kind)}")
        except _Invalid as exc:
            bad(f"record {number}: {exc}")
    return log
