"""CLI: `ppchat serve`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from pathlib import Path

from ppchat.constants import FRAME_SECONDS, MAX_BACKLOG_FRAMES
from ppchat.errors import PPChatError


def register(sub: argparse._SubParsersAction) -> None:
    from ppchat.commands.talk import _model_args

    p = sub.add_parser(
        "serve", help="serve the model over the PersonaPlex websocket protocol (NVIDIA's web UI, `ppchat talk --server`)",
        description="Serve PersonaPlex over NVIDIA's websocket protocol: GET /api/chat (Ogg/Opus audio both ways, the "
                    "monologue as text, per-step timings as metadata), GET /health (JSON for load balancers), and "
                    "NVIDIA's web UI at / when it is available. Up to --max-conversations at once (one batched step "
                    "for all); a client beyond that gets an error naming /health. Every conversation is recorded as "
                    "a session of kind 'served'.",
    )
    _model_args(p)
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface, "
                        "then use --token)")
    g.add_argument("--port", type=int, default=8998, help="port (default 8998, the reference's)")
    g.add_argument("--ssl", nargs=2, metavar=("CERT", "KEY"), type=Path, default=None,
                   help="serve wss:// and https:// with this certificate and private key (PEM files)")
    g.add_argument("--token", default=None,
                   help="require this secret from clients (?token=... or 'Authorization: Bearer ...')")
    g.add_argument("--static", type=Path, default=None, metavar="DIR",
                   help="serve this folder at / (NVIDIA's web UI; default: its dist.tgz from the model download)")
    g.add_argument("--idle-timeout", type=float, default=10.0, metavar="S",
                   help="close a live connection that sent nothing for S seconds (default 10)")
    g.add_argument("--max-backlog", type=int, default=MAX_BACKLOG_FRAMES, metavar="FRAMES",
                   help="when the model falls behind, drop incoming frames beyond this backlog "
                        f"(default {MAX_BACKLOG_FRAMES} = {MAX_BACKLOG_FRAMES * FRAME_SECONDS * 1000:.0f} ms)")
    g.add_argument("--max-conversations", type=int, default=1, metavar="N",
                   help="run up to N conversations at once, stepped together in one batch (default 1). Each has "
                        "its own voice, role prompt, seed, recording and monitor socket; temperatures and top-k "
                        "are the server's for all (--temp-text, --topk-text, --temp, --topk), and a client asking for others is told so")
    p.add_argument("--no-monitor", action="store_true", help="do not open the `ppchat monitor` socket")
    p.set_defaults(func=cmd_serve)


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def _ssl_context(pair):
    if pair is None:
        return None
    import ssl

    cert, key = pair
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise PPChatError(f"cannot use --ssl {cert} {key}: {exc}; pass a PEM certificate and its private key") from None
    return context


def _log_connections() -> None:
    """Who connected and why each connection closed, on stderr for the operator (and in the log file)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda record: record.exc_info is None)  # tracebacks go to the log file only
    logger = logging.getLogger("ppchat.net")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = True


def cmd_serve(args) -> int:
    from ppchat.commands.talk import _banner, _options
    from ppchat.conversation import Conversation
    from ppchat.net.server import ChatServer, ServeOptions, ServerThread
    from ppchat.net.webui import find_web_ui

    if not 0 <= args.port <= 65535:
        raise PPChatError(f"--port {args.port} is not a port number (0-65535)")
    if args.idle_timeout <= 0:
        raise PPChatError(f"--idle-timeout must be positive, got {args.idle_timeout}")
    if args.max_conversations < 1:
        raise PPChatError(f"--max-conversations must be at least 1, got {args.max_conversations}")
    if args.max_backlog < 1:
        raise PPChatError(f"--max-backlog must be at least 1, got {args.max_backlog}")
    if args.static is not None and not (args.static / "index.html").is_file():
        raise PPChatError(f"--static {args.static} has no index.html; pass the folder of an unpacked web UI")
    ssl_context = _ssl_context(args.ssl)
    _log_connections()
    if not _loopback(args.host) and args.token is None:
        print(f"ppchat: warning: listening on {args.host} without --token: anyone who can reach this port can talk "
              "to the model and fill the sessions folder", file=sys.stderr)
    options = _options(args, monitor=not args.no_monitor, max_backlog_frames=args.max_backlog)
    if args.max_conversations > 1:
        from ppchat.served import ServedBatch

        conv = ServedBatch(options, args.max_conversations)
    else:
        conv = Conversation(options)
    _banner(conv)
    static = args.static or find_web_ui()
    options = ServeOptions(host=args.host, port=args.port, token=args.token, static_dir=static,
                           idle_timeout=args.idle_timeout, max_conversations=args.max_conversations)
    server = ServerThread(ChatServer(conv, options), ssl_context=ssl_context)
    try:
        server.start()
        scheme = "https" if ssl_context else "http"
        where = f"{scheme}://{args.host}:{server.port}"
        print(f"ppchat serve: {where}{'/' if static else ''} ({'web UI' if static else 'no web UI'}), "
              f"websocket {where.replace('http', 'ws', 1)}/api/chat, health {where}/health", file=sys.stderr)
        if conv.monitor is not None:
            print(f"monitor: ppchat monitor --socket {conv.monitor.path}", file=sys.stderr)
        elif args.max_conversations > 1 and not args.no_monitor:
            print("monitor: each conversation has its own socket (logged as it starts); `ppchat monitor` "
                  "attaches to the newest", file=sys.stderr)
        server.wait()
    finally:
        server.stop()
        conv.close()
    return 0
