"""`ppchat` command line: builds the parser from each `ppchat.commands` module's `register`.

Heavy imports (mlx, textual, sounddevice) happen inside the command handlers, so
`ppchat --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback

from ppchat import __version__, logfile, paths
from ppchat.commands import aec, bench, models, monitor, serve, sessions, talk, transcribe
from ppchat.errors import PPChatError, Terminated

log = logging.getLogger(__name__)

# Each module exposes register(subparsers) and attaches a handler with set_defaults(func=...).
COMMAND_MODULES = (talk, serve, monitor, sessions, transcribe, models, bench, aec)


def _terminate(signum, frame) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppchat",
        description=(
            "Talk to NVIDIA PersonaPlex 7B, a full-duplex speech-to-speech model, from your terminal. "
            "With no command, `ppchat` opens the conversation console (same as `ppchat talk`). "
            "Without downloaded weights it runs a built-in tiny demo model (random weights) so that "
            "everything can be tried; `ppchat download` fetches the real model (needs HF_TOKEN)."
        ),
        epilog=f"Log file: {paths.log_file()} (set XDG_STATE_HOME to move it).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ppchat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Bare `ppchat` (or `ppchat --voice X`) means `ppchat talk`.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["talk", *argv]
    args = parser.parse_args(argv)
    # `kill PID` should end a conversation as cleanly as Ctrl-C does: recording finalised.
    signal.signal(signal.SIGTERM, _terminate)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    logfile.setup()
    log.info("ppchat %s: %s", __version__, " ".join(["ppchat", *argv]))
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        log.info("interrupted")
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Terminated:
        log.info("terminated")
        print("\nterminated", file=sys.stderr)
        return 143
    except PPChatError as exc:
        log.info("user error: %s", exc)
        print(f"ppchat: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A bug: one line for the user, the traceback in the log (or here, if there is no log).
        log.exception("internal error")
        print(f"ppchat: internal error: {type(exc).__name__}: {exc}{logfile.see_log()}", file=sys.stderr)
        if logfile.log_path() is None:
            traceback.print_exc()
        return 1
