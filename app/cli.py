"""`ppchat` command line: builds the parser from each area's `commands.register`.

Heavy imports (mlx, textual, sounddevice) happen inside the command handlers, so
`ppchat --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from ppchat import __version__
from ppchat.errors import PPChatError

# Each module exposes register(subparsers) and attaches a handler with set_defaults(func=...).
COMMAND_MODULES = (
    "ppchat.tui.commands",
    "ppchat.engine.commands",
    "ppchat.sessions.commands",
    "ppchat.models.commands",
    "ppchat.engine.bench_command",
)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that every `finally` runs."""


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ppchat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
    # Bare `ppchat` (or `ppchat --voice X`) means `ppchat talk`.
    if "talk" in commands and (not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"))):
        argv = ["talk", *argv]
    args = parser.parse_args(argv)
    # `kill PID` should end a conversation as cleanly as Ctrl-C does: recording finalised.
    signal.signal(signal.SIGTERM, _terminate)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("\nterminated", file=sys.stderr)
        return 143
    except PPChatError as exc:
        print(f"ppchat: error: {exc}", file=sys.stderr)
        return 2
