"""Keep C libraries from writing onto the console's screen.

Textual draws on stderr, and C libraries write their complaints to the same file
descriptor 2, straight through the drawing: PortAudio's ALSA host prints "Expression
'alsa_snd_pcm_poll_descriptors_revents( … )' failed in 'src/hostapi/alsa/pa_linux_alsa.c',
line: 3665" when a duplex stream hiccups at start-up on a loaded machine (its print
function cannot be replaced: the library does not export the setter). With the cursor at
column 0 and line wrap off that left an 'E' in column 0 and the line number's last digit
in the last column, on cells Textual never redraws. `StderrToLog` points descriptor 2 at
a pipe whose lines go to the log file, and hands Textual a copy of the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


class StderrToLog:
    """While active: fd 2 → the log (INFO, one record per line); `sys.__stderr__` and
    `sys.stderr` → the terminal fd 2 was. Does nothing when fd 2 is not a terminal (a
    redirected stderr is nobody's screen). Not reentrant; enter on the main thread."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self.active = False

    def __enter__(self) -> StderrToLog:
        if not os.isatty(self.fd):
            return self
        sys.stderr.flush()
        self._terminal_fd = os.dup(self.fd)
        self._terminal = os.fdopen(self._terminal_fd, "w", encoding=sys.__stderr__.encoding or "utf-8",
                                   errors="replace", closefd=False)
        read_end, write_end = os.pipe()
        os.dup2(write_end, self.fd)
        os.close(write_end)
        self._reader = threading.Thread(target=self._drain, args=(read_end,), name="ppchat-stderr", daemon=True)
        self._reader.start()
        self._saved = sys.__stderr__, sys.stderr
        sys.__stderr__ = sys.stderr = self._terminal
        self.active = True
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.active:
            return
        self.active = False
        sys.__stderr__, sys.stderr = self._saved
        # fd 2 was the pipe's only write end: giving it back ends the reader with EOF.
        os.dup2(self._terminal_fd, self.fd)
        try:
            self._terminal.close()  # flushes: EIO when the terminal has gone (a closed window)
        except OSError:
            pass
        os.close(self._terminal_fd)
        self._reader.join(timeout=1.0)

    @staticmethod
    def _drain(read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                text = line.decode("utf-8", "backslashreplace").rstrip()
                if text:
                    log.info("stderr: %s", text)
