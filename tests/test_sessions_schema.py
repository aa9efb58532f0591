"""The session format's one schema: hostile session files on load (issue 16.1, 16.2, 16.5)
and the documented format against what a recording writes (issue 15.4)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ppchat.cli import main
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.errors import SessionError
from ppchat.sessions import schema
from ppchat.sessions.export import export
from ppchat.sessions.recorder import start_recording
from ppchat.sessions.schema import SessionMeta, parse_step_record, step_record
from ppchat.sessions.store import list_sessions, load_session

REPO = Path(__file__).resolve().parents[1]
STEPS = 30


def record(root: Path, **meta) -> Path:
    bus = EventBus()
    recorder = start_recording(bus, root, SessionMeta(voice="NATF2", role_prompt="Be brief.", **meta))
    for s in range(STEPS):
        token, piece = ((1000 + s, " word") if s % 5 == 1 else (3, None))
        bus.publish(StepEvent(step=s, audio_time=s * 0.08, wall_time=1000.0 + s * 0.08,
                              timings_ms={"encode": 1.0, "temporal": 2.0, "depformer": 3.0, "decode": 4.0, "total": 40.0 + s},
                              text_token=token, text_piece=piece, user_pcm=np.full(1920, 0.1, np.float32),
                              agent_pcm=np.full(1920, 0.2, np.float32), late=s == 3, marked=s == 4, dropped_in=2 * (s == 5),
                              underruns=1 * (s == 6), xruns=1 * (s == 7), filled="agent" if s == 8 else None,
                              aec=s == 9 or None, erle_db=31.5 if s == 9 else None))  # fmt: skip
        if s == 10:
            bus.publish(NoticeEvent("warning", "mic glitch", wall_time=1.0))
    recorder.close()
    return recorder.session_dir


def edit_json(path: Path, change) -> None:
    data = json.loads((path / "session.json").read_text())
    change(data)
    (path / "session.json").write_text(json.dumps(data))


def append_lines(path: Path, *lines: str) -> None:
    with open(path / "steps.jsonl", "a") as f:
        f.write("".join(line + "\n" for line in lines))


BAD_FIELDS = [
    ("role_prompt", lambda d: d.update(role_prompt=123)),
    ("stats.total_ms", lambda d: d["stats"].update(total_ms="x")),
    ("stats.total_ms.p95", lambda d: d["stats"]["total_ms"].update(p95="slow")),
    ("stats.steps", lambda d: d["stats"].update(steps="many")),
    ("stats", lambda d: d.update(stats=[1, 2])),
    ("voice", lambda d: d.update(voice=None)),
    ("pid", lambda d: d.update(pid=True)),
    ("sampling", lambda d: d.update(sampling=[0.8])),
    ("started", lambda d: d.update(started="yesterday")),
    ("duration_s", lambda d: d.update(duration_s=-1)),
    ("status", lambda d: d.update(status=7)),
    ("kind", lambda d: d.update(kind="séance")),
    ("frame_samples", lambda d: d.update(frame_samples=960)),
]


@pytest.mark.parametrize("field,change", BAD_FIELDS, ids=[f for f, _ in BAD_FIELDS])
def test_a_field_of_the_wrong_type_makes_that_session_corrupt_and_only_that(tmp_path, capsys, field, change):
    good = record(tmp_path)
    bad = record(tmp_path)
    edit_json(bad, change)
    summaries = {s.path: s for s in list_sessions(tmp_path)}
    assert summaries[good].status == "ok"
    assert summaries[bad].status == "corrupt" and f"'{field}'" in summaries[bad].warnings[0]
    assert "session.json" in summaries[bad].warnings[0]

    assert main(["sessions", "--sessions-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{good.name} .* ok", out) and re.search(rf"{bad.name} .* corrupt", out)
    assert main(["sessions", "--json", "--sessions-dir", str(tmp_path)]) == 0
    listed = {s["name"]: s["status"] for s in json.loads(capsys.readouterr().out)}
    assert listed == {good.name: "ok", bad.name: "corrupt"}

    with pytest.raises(SessionError, match=re.escape(f"'{field}'")):
        load_session(bad)
    assert main(["replay", str(bad), "--no-tui"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppchat: error: ") and f"'{field}'" in err and "Traceback" not in err


def test_the_console_session_browser_survives_a_corrupt_session(tmp_path):
    from ppchat.tui.app import PPChatApp
    from ppchat.tui.session_browser import SessionBrowser

    record(tmp_path)
    edit_json(record(tmp_path), lambda d: d["stats"].update(total_ms="x"))

    class Idle:
        bus = EventBus()
        running = False
        info = {"model": "test", "is_demo": True, "quantization": "none", "input_device": "", "output_device": "",
                "voice": "none", "prompt": "", "prompt_name": "", "session_dir": None, "running": False,
                "started_at": None}  # fmt: skip

        def __getattr__(self, name):
            return lambda *a, **k: None

    async def go():
        app = PPChatApp(Idle(), autostart=False, sessions_root=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("s")
            for _ in range(5):
                await pilot.pause()
            assert isinstance(app.screen, SessionBrowser)
            assert sorted(s.status for s in app.screen.summaries) == ["corrupt", "ok"]

    asyncio.run(go())


def test_a_non_string_piece_is_skipped_with_a_warning_replay_and_export_work(tmp_path, capsys):
    session_dir = record(tmp_path)
    lines = (session_dir / "steps.jsonl").read_text().splitlines()
    record_1 = json.loads(lines[1])
    assert record_1["piece"] == " word"
    record_1["piece"] = 5
    lines[1] = json.dumps(record_1)
    (session_dir / "steps.jsonl").write_text("\n".join(lines) + "\n")

    session = load_session(session_dir)
    assert [w for w in session.warnings if "1 damaged line" in w and "'piece'" in w]
    assert [e.step for e in session.steps] == [s for s in range(STEPS) if s != 1]
    assert main(["replay", str(session_dir), "--no-tui"]) == 0
    assert "word" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["export", str(session_dir), "--out", str(out)]) == 0
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".srt", ".txt", ".wav"]


@pytest.mark.parametrize("record_", [{"step": "7"}, {"step": 1.5}, {"t": 0.0}, {"step": 3, "t": 0.2, "ms": {"total": "x"}},
                                     {"step": 3, "t": 0.2, "token": "hello"}, {"step": 3, "t": 0.2, "filled": "nobody"},
                                     {"step": 3, "t": 0.2, "late": "yes"}, {"step": 3, "t": float("nan")}])
def test_malformed_step_records_are_refused_by_the_schema(record_):
    with pytest.raises(ValueError):
        parse_step_record(record_)


def test_crafted_step_numbers_are_bounded_by_the_recording(tmp_path, capsys):
    session_dir = record(tmp_path)
    append_lines(session_dir, json.dumps({"step": 50_000_000, "t": 4e6}), json.dumps({"step": -3, "t": 0.0}),
                 json.dumps({"step": 12, "t": 0.96}))  # fmt: skip
    session = load_session(session_dir)
    assert session.frames == STEPS and session.steps[-1].step == STEPS - 1
    assert any("2 step line(s) outside the recording (steps 0-29)" in w for w in session.warnings)
    assert any("'step' should be at least 0, not -3" in w for w in session.warnings)
    out = tmp_path / "out"
    written = export(session, out, ("json", "wav"))
    assert len(json.loads(written[0].read_text())["text"]) == STEPS
    assert written[1].stat().st_size < 2 * 4 * 1920 * STEPS + 100
    assert main(["export", str(session_dir), "--out", str(out), "--format", "json"]) == 0
    assert "outside the recording" in capsys.readouterr().err


def test_steps_are_bounded_even_if_session_json_claims_more(tmp_path):
    session_dir = record(tmp_path)
    edit_json(session_dir, lambda d: d["stats"].update(steps=10**12))
    for name in ("user.wav", "agent.wav"):
        (session_dir / name).unlink()
    append_lines(session_dir, json.dumps({"step": 10**11, "t": 1.0}))
    session = load_session(session_dir)
    assert session.frames == STEPS


# --- the documented format is what the recorder writes (issue 15.4) ----------------------------


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Session folder format")
    return text[start : text.index("\n## ", start)]


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("sampling", "devices", "ms", "total_ms"):
            out |= _keys(v, prefix + k + ".")
    return out


def test_readme_session_json_example_is_what_a_recording_writes(tmp_path):
    written = json.loads((record(tmp_path, sampling={"temp": 0.8, "seed": 42}, quantization="q4") / "session.json").read_text())
    example = json.loads(re.search(r"```json\n(.*?)```", _readme_section(), re.S).group(1))
    assert _keys(example) == _keys(written)
    assert list(example) == list(written)  # and in the same order
    for key in ("format_version", "sample_rate", "frame_samples", "quantization", "kind"):
        assert example[key] == written[key], key
    assert set(example["sampling"]) <= set(json.loads(json.dumps(_sampling_keys())))
    assert list(written) == list(schema.SESSION_FIELDS) and list(written["stats"]) == list(schema.STATS_FIELDS)


def _sampling_keys():
    from ppchat.sampling import Sampling

    return Sampling().to_json()


def test_readme_step_line_example_and_optional_keys_are_what_a_recording_writes(tmp_path):
    lines = [json.loads(line) for line in (record(tmp_path) / "steps.jsonl").read_text().splitlines()]
    steps = [d for d in lines if "kind" not in d]
    section = _readme_section()
    example = json.loads(re.search(r"\* a step: `(\{.*?\})`", section).group(1).replace("…", "0"))
    with_text = next(d for d in steps if "token" in d)
    assert list(example) == list(with_text)
    optional = re.search(r"plus (.*?) when set", section).group(1)
    documented = set(re.findall(r"`(\w+)`", optional))
    written_optional = set().union(*(set(d) for d in steps)) - set(steps[0])
    assert documented == written_optional - {"token", "piece"}
    assert documented | {"token", "piece"} == {k for k, (_, _, opt) in schema.STEP_FIELDS.items() if opt}
    notice = next(d for d in lines if d.get("kind") == "notice")
    notice_example = json.loads(re.search(r'\* `(\{"kind": "notice".*?\})`', section).group(1).replace("…", "0")
                                .replace('"info|warning|error"', '"info"'))  # fmt: skip
    assert list(notice_example) == list(notice)
    for event in steps:
        assert step_record(parse_step_record(event)) == event  # the serialiser and the parser agree


def test_schema_docstring_names_every_file_and_no_stale_key():
    doc = schema.__doc__
    assert "temp_audio" not in doc and "compute" not in doc and "▁hello" not in doc
    section = _readme_section()
    for f in schema.SESSION_FILES:
        assert f"`{f.name}`" in section and f.doc in section
