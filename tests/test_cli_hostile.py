"""First contact and hostile input at the command line: one clear sentence, the right exit
status, nothing lost (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ppchat.engine.prompts import named_prompt, resolve_prompt
from ppchat.errors import PPChatError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str | bytes, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppchat", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def assert_one_clear_error(proc: subprocess.CompletedProcess, *phrases: str, status: int = 2) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == status, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("ppchat: error: ")]
    assert len(errors) == 1, err
    for phrase in phrases:
        assert phrase in errors[0], err
    return errors[0]


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, np.zeros(4800, np.float32), 24000)
    return path


# --- 16.3 prompt bytes ------------------------------------------------------------------------


def test_prompt_with_invalid_utf8_bytes_is_refused_before_the_model_loads(wav, tmp_path):
    proc = run_cli("respond", "-i", str(wav), "-o", str(tmp_path / "out.wav"), "--model", "demo", "--no-record",
                   "--prompt", b"abc\x80\xff")  # fmt: skip
    assert_one_clear_error(proc, "not UTF-8", "0x80", "--prompt @FILE")
    assert not (tmp_path / "out.wav").exists()


def test_prompt_text_checks():
    with pytest.raises(PPChatError, match="not UTF-8"):
        resolve_prompt("abc\udc80\udcff")
    with pytest.raises(PPChatError, match="not UTF-8"):
        named_prompt("x\udcff")
    assert resolve_prompt("Ünïcode is fine")[1] == "Ünïcode is fine"


# --- 16.6 sample rates, 16.17 missing files -------------------------------------------------


def raw_wav_with_rate(path: Path, rate: int, samples: int = 24000) -> Path:
    sf.write(path, np.zeros(samples, np.float32), 24000, subtype="FLOAT")
    data = bytearray(path.read_bytes())
    fmt = data.index(b"fmt ") + 8
    data[fmt + 4 : fmt + 8] = rate.to_bytes(4, "little")  # the header's sample rate, nothing else
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate", [1, 3999, 384001, 2**31 - 1])
def test_input_with_an_absurd_sample_rate_is_refused(tmp_path, rate, capsys):
    from ppchat.cli import main

    wav = raw_wav_with_rate(tmp_path / "odd.wav", rate)
    assert main(["respond", "-i", str(wav), "-o", str(tmp_path / "out.wav"), "--model", "demo", "--no-record"]) == 2
    err = capsys.readouterr().err
    assert f"{rate} Hz" in err and "4000-384000 Hz" in err and str(wav) in err
    assert not (tmp_path / "out.wav").exists()


def test_voice_file_with_an_absurd_sample_rate_is_refused(tmp_path):
    from ppchat.errors import AudioError
    from ppchat.models.voices import load_voice_audio

    with pytest.raises(AudioError, match="says its sample rate is 1 Hz"):
        load_voice_audio(raw_wav_with_rate(tmp_path / "v.wav", 1))


def test_sane_odd_rates_are_still_read(tmp_path):
    from ppchat.respond import read_audio

    sf.write(tmp_path / "8k.wav", np.zeros(8000, np.float32), 8000)
    pcm, notes = read_audio(tmp_path / "8k.wav")
    assert len(pcm) == 24000 and "8000 Hz" in notes[0]


def test_a_missing_input_file_is_said_to_be_missing(tmp_path, capsys):
    from ppchat.cli import main

    missing = tmp_path / "nope.wav"
    assert main(["respond", "-i", str(missing), "-o", str(tmp_path / "o.wav"), "--model", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"ppchat: error: audio file {missing} does not exist"
    assert main(["respond", "-i", str(tmp_path), "-o", str(tmp_path / "o.wav"), "--model", "demo"]) == 2
    assert "is a folder, not an audio file" in capsys.readouterr().err
    from ppchat.errors import AudioError
    from ppchat.models.voices import load_voice_audio

    with pytest.raises(AudioError, match=r"voice audio .*nope.wav does not exist$"):
        load_voice_audio(missing)


# --- 16.7 outputs are checked before the run --------------------------------------------------


def test_an_output_that_is_a_folder_is_refused_before_the_run(tmp_path, wav, capsys, monkeypatch):
    from ppchat import conversation
    from ppchat.cli import main

    monkeypatch.setattr(conversation, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["respond", "-i", str(wav), "-o", str(tmp_path), "--model", "demo"]) == 2
    assert "it is a folder; give a file name" in capsys.readouterr().err
    out = tmp_path / "out.wav"
    assert main(["respond", "-i", str(wav), "-o", str(out), "--text-json", str(tmp_path), "--model", "demo"]) == 2
    assert "is a folder" in capsys.readouterr().err and not out.exists()
    assert main(["respond", "-i", str(wav), "-o", str(out), "--text-json", str(out), "--model", "demo"]) == 2
    assert "same file" in capsys.readouterr().err


def test_an_unwritable_text_json_is_refused_before_the_run(tmp_path, wav, capsys, monkeypatch):
    """As root the permission bits don't stop a write, so a folder where files can't be created
    is simulated: creating any file in it fails as on a read-only file system."""
    import errno

    from ppchat import conversation, respond
    from ppchat.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def guarded_open(path, flags, *args):
        if str(path).startswith(str(locked)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(respond.os, "open", guarded_open)
    monkeypatch.setattr(conversation, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out.wav"
    assert main(["respond", "-i", str(wav), "-o", str(out), "--text-json", str(locked / "t.json"), "--model", "demo"]) == 2
    assert f"cannot write {locked / 't.json'}: Read-only file system" in capsys.readouterr().err
    assert not out.exists() and list(locked.iterdir()) == []


def test_a_read_only_output_file_is_refused(tmp_path, wav, capsys, monkeypatch):
    from ppchat import conversation, respond
    from ppchat.cli import main

    out = tmp_path / "out.wav"
    out.write_bytes(b"keep me")
    monkeypatch.setattr(respond.os, "access", lambda path, mode: Path(path) != out)  # root may write anything
    monkeypatch.setattr(conversation, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["respond", "-i", str(wav), "-o", str(out), "--model", "demo"]) == 2
    assert "the file is read-only" in capsys.readouterr().err and out.read_bytes() == b"keep me"


# --- 16.8 option ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,option,expected",
    [
        (["talk", "--temp", "nan"], "--temp", "must be a number >= 0, not 'nan'"),
        (["talk", "--temp", "-1"], "--temp", "must be a number >= 0"),
        (["talk", "--temp-text", "inf"], "--temp-text", "must be a number >= 0"),
        (["talk", "--topk", "0"], "--topk", "must be a whole number >= 1"),
        (["talk", "--topk-text", "-5"], "--topk-text", "must be a whole number >= 1"),
        (["talk", "--seed", "-1"], "--seed", "must be a whole number from 0 to"),
        (["talk", "--max-backlog", "-1"], "--max-backlog", "must be a whole number >= 0"),
        (["talk", "--samplerate", "0"], "--samplerate", "must be a whole number from 4000 to 384000"),
        (["talk", "--duration", "-5"], "--duration", "must be a number > 0"),
        (["talk", "--duration", "0"], "--duration", "must be a number > 0"),
        (["respond", "-i", "x", "-o", "y", "--temp", "nan"], "--temp", "must be a number >= 0"),
    ],
)
def test_out_of_range_options_are_refused_with_the_range(argv, option, expected, capsys):
    from ppchat.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and expected in err


def test_in_range_options_parse():
    from ppchat.cli import build_parser

    args = build_parser().parse_args(["talk", "--temp", "0", "--topk", "1", "--seed", "0", "--max-backlog", "0",
                                      "--samplerate", "48000", "--duration", "0.5"])  # fmt: skip
    assert (args.temp, args.topk, args.seed, args.max_backlog, args.samplerate, args.duration) == (0, 1, 0, 0, 48000, 0.5)


# --- 16.12 an interrupted respond -------------------------------------------------------------


@pytest.mark.parametrize("sig,status,reason", [(2, 130, "SIGINT"), (15, 143, "SIGTERM")])
def test_interrupted_respond_is_stopped_with_the_reason_and_exits_with_the_signal_code(tmp_path, sig, status, reason):
    import json
    import signal
    import time

    long = tmp_path / "long.wav"
    sf.write(long, 0.1 * np.sin(np.arange(24000 * 120) / 10).astype(np.float32), 24000)
    sessions, out = tmp_path / "sessions", tmp_path / "out.wav"
    proc = subprocess.Popen([sys.executable, "-m", "ppchat", "respond", "-i", str(long), "-o", str(out), "--model",
                             "demo", "--sessions-dir", str(sessions)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(sessions.glob("*/steps.jsonl")) or list(sessions.glob("*/steps.jsonl"))[0].stat().st_size == 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(signal.Signals(sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err and f"{out} was not written" in err and not out.exists()
    [session] = list(sessions.iterdir())
    info = json.loads((session / "session.json").read_text())
    assert info["status"] == "stopped" and reason in info["stop_reason"] and info["kind"] == "respond"
    assert info["stats"]["steps"] > 0
    assert (session / "user.wav").stat().st_size == (session / "agent.wav").stat().st_size


def test_ctrl_c_while_waiting_for_the_step_thread_does_not_lose_track_of_it():
    """CPython < 3.13 marks a thread as stopped when Ctrl-C lands inside Thread.join(timeout);
    `respond` then exited while a step was inside MLX and died of std::terminate (SIGABRT)
    instead of exiting 130. The runtime waits on its own event instead."""
    import signal
    import threading

    from ppchat.engine.events import EventBus
    from ppchat.engine.runtime import DuplexRuntime, FrameResult
    from ppchat.engine.virtual_io import ArrayAudio

    release = threading.Event()

    class Stuck:
        frame_size, sample_rate = 1920, 24000

        def process(self, pcm):
            release.wait(10)  # a step that takes a while
            return FrameResult(pcm=pcm, text_token=None, text_piece=None, timings_ms={})

    runtime = DuplexRuntime(Stuck(), ArrayAudio(np.zeros(1920 * 4, np.float32), 24000, realtime=False), EventBus())
    runtime.start()

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            runtime.join(timeout=5)
        assert runtime.running  # still inside its step
    finally:
        signal.signal(signal.SIGALRM, previous)
        release.set()
    runtime.stop()
    assert not runtime.running and runtime._thread.join(5) is None and not runtime._thread.is_alive()


# --- 16.11 start-up status flags, 16.15 no sound device -------------------------------------


@pytest.mark.parametrize("callback", ["duplex", "split"])
def test_status_flags_before_the_stream_runs_are_not_xruns(callback):
    sd = pytest.importorskip("sounddevice")
    from ppchat.engine.audio_io import StreamBuffers

    buffers = StreamBuffers(capture_capacity=48000, playback_capacity=48000, prebuffer=0)
    block = np.zeros((480, 1), np.float32)

    def call(flags: int) -> None:
        status = sd.CallbackFlags(flags)
        if callback == "duplex":
            buffers.duplex_callback(block, block.copy(), 480, None, status)
        else:
            buffers.input_callback(block, 480, None, status)
            buffers.output_callback(block.copy(), 480, None, status)

    for _ in range(125):  # what PortAudio reported while one stream started
        call(8 | 1)  # priming output, input underflow
    assert buffers.xruns == 0
    call(0)  # running
    call(2)  # a real overflow
    call(0)
    assert buffers.xruns == (1 if callback == "duplex" else 2)


@pytest.mark.parametrize("argv", [["devices"], ["talk", "--list-devices"], ["--list-devices"]])
def test_no_audio_devices_is_said_with_what_to_do(argv, monkeypatch, capsys):
    sd = pytest.importorskip("sounddevice")
    from ppchat.cli import main

    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no audio devices found" in captured.err and "tools/virtual-audio.sh" in captured.err



def test_a_running_virtual_card_the_shell_cannot_see_is_named_with_the_export(request, monkeypatch, capsys):
    """tools/virtual-audio.sh puts PulseAudio under /tmp/ppchat-xdg; a shell without that
    XDG_RUNTIME_DIR sees no device, and the error says the one line that fixes it."""
    import shutil
    import socket
    import tempfile

    sd = pytest.importorskip("sounddevice")
    from ppchat.cli import main
    from ppchat.engine import audio_io

    runtime = Path(tempfile.mkdtemp(prefix="xdg", dir="/tmp"))  # short: a socket path has 108 bytes
    (runtime / "pulse").mkdir()
    request.addfinalizer(lambda: shutil.rmtree(runtime, ignore_errors=True))
    monkeypatch.setattr(audio_io, "VIRTUAL_AUDIO_RUNTIME_DIR", runtime)
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [])
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert audio_io.no_device_hint() == audio_io.NO_DEVICE_HINT  # no PulseAudio there: the usual advice
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(runtime / "pulse" / "native"))
        assert main(["devices"]) == 2
        assert f"export XDG_RUNTIME_DIR={runtime}" in capsys.readouterr().err
        monkeypatch.setenv("XDG_RUNTIME_DIR", "/elsewhere")  # the user chose a runtime dir: not ours to judge
        assert audio_io.no_device_hint() == audio_io.NO_DEVICE_HINT

# --- 16.19 a warning raised before anyone listens ----------------------------------------------


def test_a_notice_published_before_anyone_subscribes_reaches_the_first_subscriber():
    from ppchat.engine.events import EventBus, NoticeEvent, StepEvent

    bus = EventBus()
    bus.publish(NoticeEvent("warning", "monitor socket unavailable: x"))
    bus.publish(StepEvent(0, 0.0, 0.0, {}))  # steps are not kept: nobody missed them
    first = bus.subscribe(name="console")
    second = bus.subscribe(name="recorder")
    assert [e.message for e in first.drain()] == ["monitor socket unavailable: x"]
    assert second.drain() == []
    first.close()
    second.close()
    for i in range(40):
        bus.publish(NoticeEvent("info", f"n{i}"))
    assert len(bus.subscribe().drain()) == EventBus.UNHEARD_NOTICES  # bounded


def test_the_user_is_told_that_the_monitor_socket_is_off(tmp_path):
    from ppchat.conversation import Conversation, TalkOptions
    from ppchat.engine.events import NoticeEvent

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = TalkOptions(model="demo", monitor=True, monitor_socket=blocker / "monitor.sock", record=False)
    with Conversation(options) as conv:
        assert conv.monitor is None
        sub = conv.bus.subscribe(name="headless")  # as `talk --no-tui` and the console do, after setting up
        warnings = [e for e in sub.drain() if isinstance(e, NoticeEvent) and e.level == "warning"]
    assert len(warnings) == 1 and "monitor socket unavailable" in warnings[0].message


# --- 16.17 `voices` on a broken model folder, `replay` on a folder that is not a session ---------


def test_voices_on_a_broken_model_folder_is_an_error(tmp_path, capsys):
    from ppchat.cli import main
    from ppchat.models import manifest
    from tests.conftest import fixtures_root

    broken = tmp_path / "model"
    broken.mkdir()
    (broken / manifest.LM_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # an empty safetensors file
    (broken / manifest.MIMI_FILE).write_bytes(b"truncated")
    import shutil

    shutil.copy(fixtures_root() / "tokenizer_tiny.model", broken / manifest.TOKENIZER_FILE)
    assert main(["voices", "--model", str(broken)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "ppchat: error: " in captured.err and str(broken) in captured.err


def test_voices_on_a_model_without_presets_says_so(tmp_path, capsys):
    from ppchat.cli import main

    bundle = tmp_path / "model"
    import shutil

    from tests.conftest import fixture_dirs, fixtures_root

    shutil.copytree(fixture_dirs("lm")[0], bundle / "lm")
    shutil.copytree(fixture_dirs("mimi")[0], bundle / "mimi")
    shutil.copy(fixtures_root() / "tokenizer_tiny.model", bundle / "tokenizer.model")
    assert main(["voices", "--model", str(bundle)]) == 2  # a sound model that ships no voices
    err = capsys.readouterr().err
    assert "has no preset voices" in err and "--voice PATH.wav" in err


def test_replay_of_a_folder_that_is_not_a_session_says_so(tmp_path, capsys):
    from ppchat.cli import main

    (tmp_path / "holiday.jpg").write_bytes(b"")
    assert main(["replay", str(tmp_path), "--no-tui"]) == 2
    err = capsys.readouterr().err
    assert "is not a ppchat session folder" in err and "repair" not in err
    assert main(["sessions", "repair", str(tmp_path)]) == 2
    assert "not a ppchat session" in capsys.readouterr().err


@pytest.mark.parametrize("sig,status", [(2, 130), (15, 143)])
def test_a_headless_talk_ended_by_a_signal_saves_and_exits_with_the_signal_code(pulse_device, tmp_path, sig, status):
    import json
    import signal
    import time

    sessions = tmp_path / "sessions"
    # A private null sink: other users of the shared virtual card (reloading its default sink) can't
    # end this stream, and it doesn't play into theirs.
    sink = "ppchat_robust_signals"
    if sink not in subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True).stdout:
        subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={sink}", "rate=24000", "channels=1"],
                       check=True, capture_output=True)  # fmt: skip
    env = {**os.environ, "PULSE_SINK": sink, "PULSE_SOURCE": f"{sink}.monitor"}
    proc = subprocess.Popen([sys.executable, "-m", "ppchat", "talk", "--no-tui", "--model", "demo", "--input-device",
                             "pulse", "--output-device", "pulse", "--no-monitor", "--sessions-dir", str(sessions)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120

    def recorded_steps() -> int:
        logs = list(sessions.glob("*/steps.jsonl"))
        return sum(1 for line in logs[0].read_text().splitlines() if '"kind"' not in line) if logs else 0

    while recorded_steps() <= 10:  # the recorder flushes once a second
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.Signals(sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    [session] = list(sessions.iterdir())
    info = json.loads((session / "session.json").read_text())
    assert info["status"] == "complete" and info["kind"] == "talk" and info["stats"]["steps"] > 10
