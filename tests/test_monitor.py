"""The monitor socket: a private Unix socket streaming the EventBus to read-only clients."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ppchat import paths
from ppchat.engine import monitor_socket
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.monitor_socket import MonitorServer, MonitorStep, find_server_socket, level_envelope
from ppchat.errors import PPChatError

INFO = {"model": "PersonaPlex 7B", "is_demo": True, "voice": "NATF2", "quantization": "q4"}
DEADLINE_S = 20.0  # guards against hangs only; nothing asserts on speed


@pytest.fixture
def runtime(tmp_path, monkeypatch) -> Path:
    # A short directory: Unix socket paths are limited to ~100 bytes.
    base = Path(f"/tmp/ppchat-test-{os.getpid()}-{threading.get_ident() % 10000}")
    base.mkdir(exist_ok=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    yield base
    for p in sorted(base.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    base.rmdir()


def step(n: int, piece: str | None = None, pcm: np.ndarray | None = None) -> StepEvent:
    return StepEvent(n, n * 0.08, time.time(), {"encode": 2.0, "temporal": 20.0, "depformer": 6.0, "decode": 2.0, "total": 30.0},
                     100 + n if piece else 3, piece, in_rms=0.1, in_peak=0.5, user_pcm=pcm, agent_pcm=pcm)


class LineReader:
    """Reads JSON lines from a client socket in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[dict] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.sock.makefile("rb") as stream:
            for line in stream:
                self.messages.append(json.loads(line))
        self.closed.set()

    def steps(self) -> list[int]:
        return [m["step"] for m in self.messages if m["type"] == "step"]

    def wait_for(self, predicate, what: str) -> None:
        end = time.monotonic() + DEADLINE_S
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; got {self.messages[-3:]}")
            time.sleep(0.01)


def test_runtime_dir_and_socket_are_private(runtime):
    with MonitorServer(EventBus(), INFO) as server:
        assert server.path == runtime / "ppchat" / "monitor.sock"
        assert stat.S_IMODE(os.stat(runtime / "ppchat").st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(server.path).st_mode)
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert not server.path.exists()  # removed on close


def test_without_xdg_runtime_dir_a_private_tmp_dir_is_used(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(paths.tempfile, "gettempdir", lambda: str(tmp_path))
    directory = paths.runtime_dir()
    assert directory == tmp_path / f"ppchat-{os.getuid()}"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_info_on_connect_then_steps_with_envelopes_and_notices(runtime):
    bus = EventBus()
    with MonitorServer(bus, INFO):
        reader = LineReader(monitor_socket.connect())  # finds the server by itself
        reader.wait_for(lambda: reader.messages, "the info line")
        info = reader.messages[0]
        assert info["type"] == "info" and info["version"] == 1 and info["pid"] == os.getpid()
        assert {k: info[k] for k in INFO} == INFO
        ramp = np.linspace(-1.0, 1.0, 1920, dtype=np.float32)
        bus.publish(step(0, " hi", pcm=ramp))
        bus.publish(NoticeEvent("warning", "recording stopped: disk full", 5.0))
        reader.wait_for(lambda: len(reader.messages) >= 3, "a step and a notice")
        step_msg, notice = reader.messages[1:3]
        # The step line carries every field of the event (but the audio)...
        sent, decoded = step(0, " hi"), monitor_socket.decode(json.dumps(step_msg))
        for f in dataclasses.fields(StepEvent):
            if f.name not in ("user_pcm", "agent_pcm", "wall_time"):
                assert getattr(decoded, f.name) == getattr(sent, f.name), f.name
        # ...whose 8 points are the peaks of 240-sample slices of a -1..1 ramp.
        expected = [round(float(np.abs(ramp[i * 240:(i + 1) * 240]).max()), 4) for i in range(8)]
        assert step_msg["env"]["in"] == expected and expected[0] == 1.0
        assert notice == {"type": "notice", "level": "warning", "message": "recording stopped: disk full", "wall": 5.0}
        decoded = monitor_socket.decode(json.dumps(step_msg))
        assert isinstance(decoded, MonitorStep) and decoded.text_piece == " hi" and decoded.env_in == expected
    reader.closed.wait(DEADLINE_S)
    assert reader.closed.is_set()  # closing the server ends the clients' streams


def test_level_envelope_splits_the_frame_into_equal_slices():
    pcm = np.zeros(1920, np.float32)
    pcm[5] = -0.5
    pcm[1919] = 0.25
    assert level_envelope(pcm) == [0.5, 0, 0, 0, 0, 0, 0, 0.25]
    assert level_envelope(None) == [0.0] * 8


def test_subprocess_monitor_prints_status_lines(runtime):
    bus = EventBus()
    with MonitorServer(bus, INFO, runtime / "m.sock") as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ppchat", "monitor", "--no-tui", "--socket", str(server.path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        seen: list[str] = []
        end = time.monotonic() + DEADLINE_S
        n = 0
        half_scale = np.full(1920, 0.5, np.float32)
        try:
            # Every 5 s the agent says "Hello" three times, then is silent: each turn ends and is printed.
            while not (any("Hello Hello Hello" in line for line in seen) and any(" p50 " in line for line in seen)):
                assert time.monotonic() < end, f"no status line from the monitor: {seen}"
                bus.publish(step(n, " Hello" if n % 60 in (3, 13, 23) else None, pcm=half_scale))
                n += 1
                time.sleep(0.02)
                while not lines.empty():
                    seen.append(lines.get())
            server.close()
            assert proc.wait(timeout=DEADLINE_S) == 0
        finally:
            proc.kill()
            proc.wait()
    while not lines.empty():
        seen.append(lines.get())
    assert seen[0].startswith("attached to PersonaPlex 7B [DEMO] voice NATF2")
    assert sum(line.startswith("attached to") for line in seen) == 1
    assert any(re.fullmatch(r"agent \d\d:\d\d\.\d  Hello Hello Hello\n", line) for line in seen)
    header = seen.index(next(line for line in seen if " p50 " in line))
    status = seen[header + 1].split()
    # peak 0.5 = -6 dBFS, 0.9 of the meter: 7 of 8 eighths in each 10 ms slice of the envelope.
    assert status[2:4] == ["-6", "▇▇▇▇▇▇▇▇"] and status[6:8] == ["30.0", "30.0"]
    assert seen[-1].strip() == "ppchat closed the monitor connection"


def test_monitor_without_a_server_says_how_to_fix_it(runtime):
    result = subprocess.run(
        [sys.executable, "-m", "ppchat", "monitor", "--no-tui", "--socket", str(runtime / "nothing.sock")],
        capture_output=True, text=True, timeout=DEADLINE_S,
    )
    assert result.returncode == 2
    assert "nothing.sock" in result.stderr and "Traceback" not in result.stderr


def test_clients_come_and_go_and_a_stalled_one_is_dropped_without_hurting_others(runtime):
    bus = EventBus()
    count = 600
    piece = " " + "x" * 500  # ~1 KB a line: the stalled client's buffers fill quickly
    with MonitorServer(bus, INFO, max_backlog_bytes=32 * 1024) as server:
        steady = LineReader(monitor_socket.connect())
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(server.path))  # connects, then never reads
        steady.wait_for(lambda: steady.messages and server.client_count == 2, "both clients")
        for n in range(count):
            bus.publish(step(n, piece))
            if n % 50 == 0:  # a client attaching and leaving again
                with monitor_socket.connect() as passerby:
                    assert passerby.recv(1) == b"{"
            time.sleep(0.001)
        steady.wait_for(lambda: len(steady.steps()) == count, "every step at the steady client")
        assert steady.steps() == list(range(count))  # complete and in order
        assert server.clients_dropped == 1  # the stalled one
        steady.wait_for(lambda: server.client_count == 1, "passers-by to be forgotten")
        stalled.close()


def test_a_second_server_leaves_the_first_ones_socket_alone(runtime):
    with MonitorServer(EventBus(), INFO) as first, MonitorServer(EventBus(), INFO) as second:
        assert first.path.name == "monitor.sock" and second.path.name == f"monitor-{os.getpid()}.sock"
        assert find_server_socket() == first.path
        first.close()
        assert find_server_socket() == second.path


def test_a_stale_socket_file_is_replaced(runtime):
    path = runtime / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crash leaves behind
    with MonitorServer(EventBus(), INFO, path) as server:
        with monitor_socket.connect(server.path) as client:
            assert client.recv(1) == b"{"


def test_explicit_path_in_use_is_a_user_error(runtime):
    with MonitorServer(EventBus(), INFO, runtime / "busy.sock") as server:
        with pytest.raises(PPChatError, match="busy.sock"):
            MonitorServer(EventBus(), INFO, server.path).start()


def screen_text(app) -> str:
    import io

    from rich.console import Console

    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True, color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def test_monitor_shows_the_sessions_own_statistics_sent_by_the_engine(runtime):
    from ppchat.tui.monitor import MonitorApp, MonitorFeed
    from ppchat.tui.widgets.latency import LatencyPanel

    bus = EventBus()
    session = {"steps": 900, "total_ms": {"mean": 45.0, "p50": 44.0, "p95": 61.3, "p99": 70.0, "max": 71.9},
               "late_frames": 3, "dropped_frames": 1, "underruns": 2, "xruns": 0}
    server = MonitorServer(bus, dict(INFO, session_stats=session)).start()
    feed = MonitorFeed(None, retry_s=0.05).start()

    async def go():
        app = MonitorApp(feed)
        async with app.run_test(size=(80, 24)) as pilot:
            end = time.monotonic() + DEADLINE_S
            while not (feed.connected and feed.info):
                assert time.monotonic() < end
                await pilot.pause(0.02)
            for n in range(3):  # attached late: this monitor sees 3 steps of 30 ms
                bus.publish(step(900 + n))
            while app.query_one(LatencyPanel).stats.steps < 3:
                assert time.monotonic() < end
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "session p50 44.0 p95 61.3 max 71.9" in text and "late 3 drop 1 under 2 xrun 0" in text
            assert "step ms since attach" in text  # the chart is what this monitor saw

    try:
        asyncio.run(go())
    finally:
        feed.close()
        server.close()


def test_monitor_app_shows_the_remote_conversation(runtime):
    from ppchat.tui.monitor import MonitorApp, MonitorFeed
    from ppchat.tui.widgets.latency import LatencyPanel
    from ppchat.tui.widgets.monologue import Monologue
    from ppchat.tui.widgets.statusbar import StatusBar

    bus = EventBus()
    server_info = dict(INFO, session_dir="/data/sessions/2025-01-01T10-00-00_ab12")
    server = MonitorServer(bus, lambda: server_info).start()
    feed = MonitorFeed(None, retry_s=0.05).start()

    async def go():
        app = MonitorApp(feed)
        async with app.run_test(size=(80, 24)) as pilot:
            end = time.monotonic() + DEADLINE_S
            while not (feed.connected and feed.info):
                assert time.monotonic() < end
                await pilot.pause(0.02)
            for n, piece in enumerate([" Hi", None, " there"]):
                bus.publish(step(n, piece))
            while app.query_one(LatencyPanel).stats.steps < 3:
                assert time.monotonic() < end
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            assert app.query_one(Monologue).transcript.plain_lines() == ["00:00 Hi there"]
            text = screen_text(app)
            # No session statistics from this server: the figures say they are this monitor's own.
            assert "step ms since attach" in text and "attach p50 30.0 p95 30.0 max 30.0" in text
            assert "● rec /data/sessions/2025-01-01T10-00-00_ab12" in text
            status = app.query_one(StatusBar).status
            assert status.state == "monitor" and status.info["model"] == "PersonaPlex 7B"
            assert "MUTED" not in text and "HALF-DUPLEX" not in text
            # The console's mic switches arrive with the info: the watcher sees the badges too.
            server_info.update(muted=True, half_duplex=True)
            while not feed.info.get("muted"):
                assert time.monotonic() < end
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            text = screen_text(app)
            assert " MUTED   HALF-DUPLEX " in text.splitlines()[0] and "MUTED " in text.splitlines()[4]
            server.close()
            while feed.connected:
                assert time.monotonic() < end
                await pilot.pause(0.02)
            await pilot.pause(0.2)
            assert app.query_one(StatusBar).status.state == "disconnected"
            assert "○ NO LINK" in screen_text(app) and "● rec" not in screen_text(app)

    try:
        asyncio.run(go())
    finally:
        feed.close()
        server.close()


def test_a_monitor_that_switches_to_another_ppchat_says_so_in_its_header(runtime):
    """`ppchat monitor` follows the newest ppchat when the one it watched ends: the header's second
    line names the pid it shows from the start, and after the switch a SWITCHED badge and the pid
    it watched before."""
    from ppchat.tui.monitor import MonitorApp, MonitorFeed

    first = MonitorServer(EventBus(), dict(INFO, pid=4100)).start()
    second = MonitorServer(EventBus(), dict(INFO, pid=4242)).start()
    feed = MonitorFeed(None, retry_s=0.05).start()

    async def go():
        app = MonitorApp(feed)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            end = time.monotonic() + DEADLINE_S
            while not (feed.connected and feed.info):
                assert time.monotonic() < end
                await pilot.pause(0.02)
            await pilot.pause(0.2)
            header = "\n".join(screen_text(app).splitlines()[:2])
            assert "pid 4100 │ " in header and "SWITCHED" not in header
            first.close()
            while feed.info.get("pid") != 4242:
                assert time.monotonic() < end
                await pilot.pause(0.02)
            await pilot.pause(0.2)
            lines = screen_text(app).splitlines()
            assert "◉ MONITOR" in lines[0] and " SWITCHED  pid 4242 (pid 4100 ended) │ " in lines[1]
            assert any(n.message == "now watching another ppchat, pid 4242: pid 4100 ended" for n in app._notifications)

    try:
        asyncio.run(go())
    finally:
        feed.close()
        first.close()
        second.close()
