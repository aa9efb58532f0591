"""Where failures are written down: a rotating log file under the XDG state directory.

Only the command line calls `setup`; as a library ppchat leaves logging to its host. User
errors are printed as one line (see `ppchat.errors`); internal errors are printed as one
line too, and their traceback goes here, so `see_log()` is appended to what the user reads.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from ppchat import paths

LOGGER = "ppchat"
MAX_BYTES = 1_000_000
BACKUPS = 3

_file: Path | None = None
_handlers: list[logging.Handler] = []


class _Stderr(logging.StreamHandler):
    """Warnings for the person at the terminal, one line each, as Python prints them unconfigured.

    Records that carry a traceback are left to the file: whoever caught the exception has
    already told the user (a notice, an error line) and points here. The stream is looked
    up on each write, as logging's last-resort handler does, so that a console capturing
    stderr while it runs captures these lines too.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self, logging.WARNING)
        self.addFilter(lambda record: record.exc_info is None)

    @property
    def stream(self):
        return sys.stderr

    def format(self, record: logging.LogRecord) -> str:
        return f"ppchat: {record.levelname.lower()}: {record.getMessage()}"


def setup(path: Path | None = None) -> Path | None:
    """Log ppchat's records to `path` (default: `paths.log_file()`); the file, or None if unwritable.

    Calling it again with the same file changes nothing; a log that cannot be opened is
    not an error (a read-only home must not stop a conversation): the warning says so.
    """
    global _file
    path = Path(path) if path is not None else paths.log_file()
    if _handlers and path == _file:
        return _file
    logger = logging.getLogger(LOGGER)
    for handler in _handlers:
        logger.removeHandler(handler)
        handler.close()
    _handlers.clear()
    _handlers.append(_Stderr())
    _file = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", errors="backslashreplace"
        )  # a command line may hold bytes that are not UTF-8
    except OSError as exc:
        problem = f"no log file: cannot write {path} ({exc.strerror or exc}); set XDG_STATE_HOME to a writable folder"
    else:
        problem = None
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s"))
        _handlers.append(handler)
        _file = path
    for handler in _handlers:
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if problem:
        logger.warning(problem)
    return _file


def log_path() -> Path | None:
    """The log file this process writes, or None when `setup` was not called or failed."""
    return _file


def see_log() -> str:
    """` (details in <log>)` to end a message about an internal error with; empty without a log."""
    return f" (details in {_file})" if _file is not None else ""
