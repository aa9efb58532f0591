"""C libraries' stderr stays off the console's screen (tui/stderr_guard.py).

A child process gets a pseudo-terminal as its stderr, as a console in a terminal has;
inside the guard it writes to fd 2 as PortAudio does (libc, below Python) and to
`sys.__stderr__` as Textual's driver does. Only the latter may reach the terminal; the
former must reach the log.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

PORTAUDIO_LINE = "Expression 'alsa_snd_pcm_poll_descriptors_revents' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 3665"

CHILD = f"""
import ctypes, logging, sys
from ppchat import logfile
from ppchat.tui.stderr_guard import StderrToLog
logfile.setup(sys.argv[1])
with StderrToLog() as guard:
    assert guard.active
    libc = ctypes.CDLL(None)
    libc.dprintf(2, b"%s\\n", {PORTAUDIO_LINE!r}.encode())
    sys.__stderr__.write("DRAWN BY TEXTUAL\\n")
    sys.__stderr__.flush()
sys.stderr.write("AFTER THE CONSOLE\\n")
sys.stderr.flush()
"""


def read_all(fd: int, proc: subprocess.Popen) -> str:
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=30)
    return out.decode("utf-8", "replace")


def test_c_library_output_goes_to_the_log_and_textual_still_draws_on_the_terminal(tmp_path):
    log = tmp_path / "ppchat.log"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(log)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    try:
        screen = read_all(master, proc)
    finally:
        os.close(master)
    assert proc.returncode == 0, screen
    assert "DRAWN BY TEXTUAL" in screen and "AFTER THE CONSOLE" in screen
    assert "Expression" not in screen
    assert f"stderr: {PORTAUDIO_LINE}" in log.read_text()


def test_a_stderr_that_is_not_a_terminal_is_left_alone(tmp_path):
    child = "from ppchat.tui.stderr_guard import StderrToLog\nwith StderrToLog() as g:\n    print(g.active)\n"
    err = tmp_path / "err.txt"
    with open(err, "w") as f:
        out = subprocess.run([sys.executable, "-c", child], stderr=f, capture_output=False, stdout=subprocess.PIPE, text=True)
    assert out.stdout.strip() == "False"


HANG_UP_CHILD = """
import sys
from ppchat.tui.stderr_guard import StderrToLog
with StderrToLog() as guard:
    assert guard.active
    print("ready", flush=True)
    sys.stdin.readline()  # the parent has closed the terminal
    sys.__stderr__.write("a last frame, still buffered")
print("left the guard", flush=True)
"""


def test_leaving_the_guard_after_the_terminal_went_away_is_not_an_error():
    """A closed window: flushing Textual's last output fails with EIO. It ended the console as
    'internal error' (seen killing the tmux window of a live console), the session saved."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", HANG_UP_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=slave, text=True)
    os.close(slave)
    assert proc.stdout.readline().strip() == "ready"
    os.close(master)
    out, _ = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0 and out.strip() == "left the guard"


HEADLESS_CHILD = f"""
import os, sys
sys.path.insert(0, sys.argv[2])
from test_console_lifecycle import StreamingConversation
from ppchat import logfile
from ppchat.commands.talk import _run_headless

class OpensAStream(StreamingConversation):
    def start(self, voice=None, prompt=None):
        os.write(2, {PORTAUDIO_LINE!r}.encode() + b"\\n")  # as PortAudio does, below Python
        super().start()

logfile.setup(sys.argv[1])
sys.exit(_run_headless(OpensAStream(step_s=0.02), 1.0))
"""


def test_headless_status_lines_are_not_interleaved_with_c_library_output(tmp_path):
    log = tmp_path / "ppchat.log"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", HEADLESS_CHILD, str(log), os.path.dirname(__file__)],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        screen = read_all(master, proc)
    finally:
        os.close(master)
    assert proc.returncode == 0, screen
    assert "time   step" in screen and "Expression" not in screen
    assert f"stderr: {PORTAUDIO_LINE}" in log.read_text()
