"""How a console ends: `--duration`, SIGTERM/SIGHUP and a terminal that went away,
headless and full-screen; every way out stops the conversation, which saves it."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import sys
import textwrap
import threading
import time

import pytest

from ppchat.commands.talk import _run_headless
from ppchat.engine.events import EventBus, StepEvent
from ppchat.tui.lifeline import Lifeline, terminal_hung_up


class StreamingConversation:
    """Publishes a step every `step_s` seconds from a thread until stopped."""

    def __init__(self, step_s: float = 0.002) -> None:
        self.bus = EventBus()
        self.step_s = step_s
        self.published = 0
        self.stopped_after: int | None = None
        self.monitor = None
        self.runtime = None
        self.last_session_dir = None  # records nothing
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, voice=None, prompt=None) -> None:
        def run() -> None:
            while not self._halt.wait(self.step_s):
                i = self.published
                self.bus.publish(StepEvent(step=i, audio_time=i * 0.08, wall_time=time.time(), timings_ms={"total": 40.0}))
                self.published += 1

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def abandon_start(self) -> None:
        pass  # start does not condition: there is nothing to give up

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
        if self.stopped_after is None:
            self.stopped_after = self.published


def test_headless_duration_counts_conversation_time(capsys):
    conv = StreamingConversation()
    assert _run_headless(conv, 10.0) == 0
    # The frame ending at 10.00 s is step 124: the stop comes right after it was read.
    assert 125 <= conv.stopped_after <= 135


def test_headless_ends_promptly_after_sigterm_and_sighup(capsys):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        before = signal.getsignal(sig)
        conv = StreamingConversation(step_s=0.08)
        timer = threading.Timer(0.5, os.kill, (os.getpid(), sig))
        timer.start()
        began = time.monotonic()
        assert _run_headless(conv, None) == 128 + sig
        assert time.monotonic() - began < 4.0  # signal at 0.5 s; loose, as above
        assert conv.stopped_after is not None and not conv.running
        assert signal.getsignal(sig) == before  # the handler is given back


def test_headless_stops_and_saves_when_stdout_goes_away(monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    conv = StreamingConversation(step_s=0.08)
    assert _run_headless(conv, None) == 0
    assert conv.stopped_after is not None and not conv.running


def test_headless_prints_waiting_once(capsys):
    conv = StreamingConversation(step_s=10.0)  # no step for the first 10 s
    threading.Timer(2.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert _run_headless(conv, None) == 143
    assert capsys.readouterr().out.count("waiting for audio") == 1


# ---- the full-screen console ----------------------------------------------------------------


def test_lifeline_signal_stops_then_asks_the_app_to_exit():
    calls = []
    with Lifeline(lambda: calls.append("stop"), lambda: calls.append("exit"), fd=None, hard_exit=calls.append) as line:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if len(calls) >= 2:
                break
            time.sleep(0.02)
        assert calls == ["stop", "exit"] and line.reason == "SIGTERM"
    assert calls == ["stop", "exit"]  # the app ended in time: no forced exit


def test_lifeline_notices_a_hung_up_terminal_and_forces_the_exit_when_the_app_is_stuck():
    master, slave = os.openpty()
    assert not terminal_hung_up(slave)
    calls = []
    line = Lifeline(lambda: calls.append("stop"), lambda: calls.append("exit"), close=lambda: calls.append("close"),
                    fd=slave, grace_s=0.2, hard_exit=lambda code: calls.append(("hard_exit", code)))
    with line:
        time.sleep(0.3)
        assert calls == []
        os.close(master)
        for _ in range(100):
            if len(calls) >= 4:
                break
            time.sleep(0.02)
        assert line.reason == "terminal closed"
        assert calls == ["stop", "exit", "close", ("hard_exit", 129)]
    os.close(slave)


CONSOLE_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_tui_app import FakeConversation
    from ppchat.tui.app import run_app

    class Saving(FakeConversation):
        last_session_dir = None

        def stop(self):
            super().stop()
            self.last_session_dir = "/data/sessions/2026-12-01T16-03-57_ece6"
            with open({marker!r}, "a") as f:
                f.write("saved\\n")

    conv = Saving()
    print("console starting", flush=True)
    sys.exit(run_app(conv))
""")


def _console_in_pty(tmp_path, ignore_sighup: bool = False):
    marker = tmp_path / "saved"
    script = CONSOLE_SCRIPT.format(tests=os.path.dirname(__file__), marker=str(marker))
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        if ignore_sighup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.environ["COLUMNS"], os.environ["LINES"] = "80", "24"
        os.execv(sys.executable, [sys.executable, "-c", script])
    output = b""
    deadline = time.monotonic() + 30
    while b"PREFILL" not in output and time.monotonic() < deadline:  # the console is drawn and starting
        if select.select([master], [], [], 0.2)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:
                break
    assert b"PREFILL" in output, output[-2000:]
    return pid, master, marker


def _wait_exit(pid: int, master: int, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:  # keep the pty drained so the console never blocks on output
            while select.select([master], [], [], 0)[0] and os.read(master, 65536):
                pass
        except OSError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    return None


@pytest.mark.timeout(60)
def test_console_ends_and_saves_promptly_after_sigterm(tmp_path):
    pid, master, marker = _console_in_pty(tmp_path)
    os.kill(pid, signal.SIGTERM)
    began = time.monotonic()
    status = _wait_exit(pid, master, 5.0)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os.close(master)
    assert status is not None, "still running 5 s after SIGTERM"
    assert os.waitstatus_to_exitcode(status) == 143
    # The bound is loose because this machine is shared; the 2 s target is met with room
    # to spare (README) and the bug this guards against never ended at all.
    assert time.monotonic() - began < 4.0
    assert marker.read_text() == "saved\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore_sighup", [False, True], ids=["sighup", "nohup"])
def test_console_ends_and_saves_when_its_terminal_goes_away(tmp_path, ignore_sighup):
    pid, master, marker = _console_in_pty(tmp_path, ignore_sighup)
    os.close(master)  # the terminal window is closed
    deadline = time.monotonic() + 5.0
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the console kept running after its terminal went away")
    assert marker.read_text() == "saved\n"
    # 129 as README says, not 1: leaving the stderr guard flushed to the dead terminal (EIO)
    assert os.waitstatus_to_exitcode(status) == 129


@pytest.mark.timeout(60)
def test_after_q_the_terminal_says_where_the_session_was_saved(tmp_path):
    """The screen that showed '● rec PATH' is gone once the console ends: a line says where."""
    pid, master, marker = _console_in_pty(tmp_path)
    os.write(master, b"q")
    output, status = b"", None
    deadline = time.monotonic() + 20
    while status is None and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:
                pass
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
    while select.select([master], [], [], 0.1)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert status is not None and os.waitstatus_to_exitcode(status) == 0
    assert marker.read_text() == "saved\n"
    tail = output.decode("utf-8", "replace").rsplit("\x1b[?1049l", 1)[-1]  # after the console's screen
    assert "ppchat: session saved in /data/sessions/2026-12-01T16-03-57_ece6" in tail
