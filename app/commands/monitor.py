"""CLI commands of the TUI area: `ppchat monitor`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="watch a running ppchat live, read-only (levels, text, latency)",
        description=(
            "Attach read-only to a running ppchat through its monitor socket and show its levels, "
            "inner-monologue text and step latency live. Any number of monitors can attach; they never "
            "slow the conversation down."
        ),
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="monitor socket to attach to (default: the running ppchat's, in $XDG_RUNTIME_DIR/ppchat/ or /tmp/ppchat-UID/)",
    )
    parser.add_argument("--no-tui", action="store_true", help="print one status line per second instead of the full-screen view")
    parser.set_defaults(func=_run_monitor)


def _run_monitor(args: argparse.Namespace) -> int:
    from ppchat.tui.monitor import run_monitor

    return run_monitor(args.socket, tui=not args.no_tui)
