"""The on-disk format of a recorded session (format_version 1).

A session is a directory named `YYYY-MM-DDTHH-MM-SS_xxxx` (local start time plus four
random hex digits) holding four files (and, once `ppchat transcribe` has run, the user's
words in `user_transcript.json`: see `user_transcript`):

`user.wav`, `agent.wav`
    Mono, 24 kHz, 32-bit float WAV (see `wav_writer`): the mic input the model heard and
    the audio it produced. Both tracks are aligned with the step log: live step `n`
    is samples `[n * 1920, (n + 1) * 1920)` of each track (80 ms frames). Steps the
    recorder never received are silence in both tracks.

`steps.jsonl`
    One JSON object per line, in the order received. Three kinds:

    * a step (no `kind` key): exactly `StepEvent.to_json()`, e.g.
      `{"step": 12, "t": 0.96, "wall": 1764032224.5, "ms": {"encode": 3.1, ..., "total": 41.0},
      "in_rms": ..., "in_peak": ..., "out_rms": ..., "out_peak": ..., "queue_in": 0,
      "queue_out": 1, "token": 1782, "piece": "▁hello"}` with optional `late`, `marked`,
      `dropped_in`, `underruns`, `xruns`, `filled`. `token`/`piece` appear when a text
      token was sampled (3 = PAD, 0 = EPAD).
    * `{"kind": "notice", "t": 0.96, "level": "warning", "message": "...", "wall": ...}`:
      a message shown to the user; `t` is the audio time of the next step.
    * `{"kind": "gap", "step": 40, "count": 7}`: steps 40..46 never reached the recorder
      (it fell behind); their audio is silence.

`session.json`
    Written atomically (temporary file + rename) when recording starts and again
    when it ends::

        {
          "format_version": 1,
          "status": "complete",          # recording | complete | stopped | recovered
          "stop_reason": null,           # why a "stopped" recording ended early
          "ppchat_version": "0.1.0",
          "model_id": "nvidia/personaplex-7b-v1",
          "quantization": "q4",          # null = unquantised
          "voice": "NATF2",
          "role_prompt": "You are a wise and friendly teacher. ...",
          "sampling": {"temp_text": 0.7, "topk_text": 25, "temp_audio": 0.8, "topk_audio": 250},
          "seed": 42424242,              # null = not seeded
          "devices": {"input": "...", "output": "...", "compute": "gpu"},
          "started": "2026-11-25T01:57:04.512+01:00",
          "pid": 4242,                   # the recording process
          "sample_rate": 24000,
          "frame_samples": 1920,
          "duration_s": 61.84,
          "stats": {
            "steps": 773,
            "total_ms": {"mean": 48.2, "p50": 47.0, "p95": 61.3, "p99": 70.8, "max": 92.4},
            "late_frames": 2, "dropped_frames": 0, "underruns": 1, "xruns": 0,
            "filled_frames": 0, "lost_steps": 0
          }
        }

    `status` is "recording" while the recorder runs. A session still "recording" whose
    process is gone was cut off by a crash: `repair` fixes the files, rebuilds
    `duration_s` and `stats` from `steps.jsonl` and sets "recovered". "stopped" means
    recording ended early (disk full, ...) while the conversation went on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from ppchat import __version__
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.errors import SessionError
from ppchat.sessions.files import atomic_write_bytes

FORMAT_VERSION = 1
SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE

USER_WAV = "user.wav"
AGENT_WAV = "agent.wav"
STEPS_JSONL = "steps.jsonl"
SESSION_JSON = "session.json"
SESSION_NAME_TIME = "%Y-%m-%dT%H-%M-%S"  # directory names: this, "_", four hex digits

STATUSES = ("recording", "complete", "stopped", "recovered")


@dataclass
class SessionMeta:
    """What the caller knows about a conversation when recording starts."""

    model_id: str = ""
    quantization: str | None = None
    voice: str = ""
    role_prompt: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    devices: dict[str, Any] = field(default_factory=dict)
    ppchat_version: str = __version__


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
        return {
            "format_version": FORMAT_VERSION,
            "status": self.status,
            "stop_reason": self.stop_reason,
            **asdict(self.meta),
            "started": self.started.isoformat(timespec="milliseconds"),
            "pid": self.pid,
            "sample_rate": SAMPLE_RATE,
            "frame_samples": FRAME_SAMPLES,
            "duration_s": round(self.duration_s, 3),
            "stats": asdict(self.stats),
        }

    @classmethod
    def from_json(cls, d: Any, source: Path) -> SessionInfo:
        """Validate and convert; raises `SessionError` naming `source` for anything malformed."""
        if not isinstance(d, dict):
            raise SessionError(f"{source} does not hold a JSON object")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise SessionError(f"{source} has no format_version; it is not a ppchat session file")
        if version > FORMAT_VERSION:
            raise SessionError(f"{source} uses session format {version}; upgrade ppchat to read it")
        status = d.get("status")
        if status not in STATUSES:
            raise SessionError(f"{source} has an unknown status {status!r} (expected one of {', '.join(STATUSES)})")
        try:
            started = datetime.fromisoformat(d["started"])
            meta = SessionMeta(**{f.name: d[f.name] for f in fields(SessionMeta) if d.get(f.name) is not None})
            stats = StepStats(**{f.name: d["stats"][f.name] for f in fields(StepStats) if f.name in d.get("stats", {})})
            return cls(
                meta=meta,
                started=started,
                status=status,
                pid=int(d["pid"]) if d.get("pid") is not None else None,
                duration_s=float(d.get("duration_s", 0.0)),
                stats=stats,
                stop_reason=d.get("stop_reason"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SessionError(f"{source} is malformed ({type(exc).__name__}: {exc})") from exc


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
    return SessionInfo.from_json(data, path)


# --- steps.jsonl records -------------------------------------------------------------


def notice_record(t: float, notice: NoticeEvent) -> dict[str, Any]:
    return {"kind": "notice", "t": round(t, 3), "level": notice.level, "message": notice.message, "wall": notice.wall_time}


def gap_record(step: int, count: int) -> dict[str, Any]:
    return {"kind": "gap", "step": step, "count": count}


@dataclass
class StepLog:
    """The parsed contents of `steps.jsonl`."""

    steps: list[StepEvent] = field(default_factory=list)
    notices: list[tuple[float, NoticeEvent]] = field(default_factory=list)  # (audio time, notice)
    lost_steps: int = 0
    bad_records: int = 0  # JSON objects that are none of the three kinds

    @property
    def frames(self) -> int:
        """Length of the aligned timeline: one past the last step."""
        return self.steps[-1].step + 1 if self.steps else 0


def parse_step_log(records: list[dict[str, Any]]) -> StepLog:
    log = StepLog()
    for record in records:
        try:
            kind = record.get("kind")
            if kind is None:
                log.steps.append(StepEvent.from_json(record))
            elif kind == "notice":
                notice = NoticeEvent(str(record["level"]), str(record["message"]), float(record.get("wall", 0.0)))
                log.notices.append((float(record["t"]), notice))
            elif kind == "gap":
                log.lost_steps += int(record["count"])
            else:
                log.bad_records += 1
        except (KeyError, TypeError, ValueError, AttributeError):
            log.bad_records += 1
    return log
