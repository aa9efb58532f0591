"""A read-only live feed of the engine for `ppchat monitor` and other local tools.

`MonitorServer` listens on a Unix domain socket in a private runtime directory
(`$XDG_RUNTIME_DIR/ppchat/`, else `/tmp/ppchat-<uid>/`, mode 0700; the socket itself
is mode 0600) and streams JSON Lines to any number of clients:

    {"type": "info", "version": 1, "pid": ..., "model": ..., "is_demo": ..., ...}   on connect and on change
    {"type": "step", "step": 12, "t": 0.96, "wall": ..., "ms": {...}, ..., "env": {"in": [...], "out": [...]}}  12.5/s
    {"type": "notice", "level": ..., "message": ..., "wall": ...}

`env` is the frame's level envelope: the peak of |pcm| over `ENVELOPE_POINTS` equal
slices of the 80 ms frame (10 ms each), so clients can draw audio without the audio.

The engine is never slowed by a client: the server reads the EventBus through its own
bounded subscription in its own thread, sends with non-blocking sockets, and
disconnects a client whose unsent backlog grows past `max_backlog_bytes`.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.errors import PPChatError
from ppchat.paths import runtime_dir

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
ENVELOPE_POINTS = 8
SOCKET_NAME = "monitor.sock"
INFO_CHECK_S = 1.0


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def find_server_socket(directory: Path | None = None) -> Path | None:
    """The socket of a running ppchat: `monitor.sock` first, then the newest `monitor-*.sock`."""
    directory = directory or runtime_dir()
    candidates = [directory / SOCKET_NAME]
    others = sorted(directory.glob("monitor-*.sock"), key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    for path in candidates + others:
        if path.exists() and _answers(path):
            return path
    return None


def level_envelope(pcm: np.ndarray | None, points: int = ENVELOPE_POINTS) -> list[float]:
    """Peak |sample| over `points` equal slices of `pcm` (a trailing remainder joins the last slice)."""
    if pcm is None or len(pcm) == 0:
        return [0.0] * points
    a = np.abs(np.asarray(pcm, dtype=np.float32).reshape(-1))
    edges = np.linspace(0, len(a), points + 1).astype(int)
    return [round(float(a[lo:hi].max()) if hi > lo else 0.0, 4) for lo, hi in zip(edges[:-1], edges[1:])]


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), default=str) + "\n").encode()


# The protocol's step fields (wire name -> StepEvent attribute): those of a `steps.jsonl` step
# line, but the protocol is versioned on its own and doesn't follow the session format.
_STEP_NUMBERS = {"t": "audio_time", "wall": "wall_time", "in_rms": "in_rms", "in_peak": "in_peak",
                 "out_rms": "out_rms", "out_peak": "out_peak"}  # fmt: skip
_STEP_COUNTS = {"queue_in": "queue_in", "queue_out": "queue_out", "dropped_in": "dropped_in",
                "underruns": "underruns", "xruns": "xruns"}  # fmt: skip


def step_message(ev: StepEvent) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "step", "step": ev.step}
    d.update({key: round(getattr(ev, attr), 6) for key, attr in _STEP_NUMBERS.items()})
    d["ms"] = {k: round(v, 3) for k, v in ev.timings_ms.items()}
    d.update({key: getattr(ev, attr) for key, attr in _STEP_COUNTS.items()})
    if ev.text_token is not None:
        d["token"], d["piece"] = ev.text_token, ev.text_piece
    d.update(late=ev.late, marked=ev.marked, filled=ev.filled)
    d["env"] = {"in": level_envelope(ev.user_pcm), "out": level_envelope(ev.agent_pcm)}
    return d


def _decode_step(d: dict[str, Any]) -> MonitorStep:
    token, piece = d.get("token"), d.get("piece")
    ms = d.get("ms") or {}
    env = d.get("env") or {}
    return MonitorStep(
        step=int(d["step"]),
        timings_ms={str(k): float(v) for k, v in ms.items()},
        text_token=int(token) if token is not None else None,
        text_piece=piece if isinstance(piece, str) else None,
        late=bool(d.get("late")),
        marked=bool(d.get("marked")),
        filled=d.get("filled") if isinstance(d.get("filled"), str) else None,
        env_in=[float(x) for x in env.get("in") or []],
        env_out=[float(x) for x in env.get("out") or []],
        **{attr: float(d.get(key, 0.0)) for key, attr in _STEP_NUMBERS.items()},
        **{attr: int(d.get(key, 0)) for key, attr in _STEP_COUNTS.items()},
    )


def notice_message(ev: NoticeEvent) -> dict[str, Any]:
    return {"type": "notice", "level": ev.level, "message": ev.message, "wall": ev.wall_time}


@dataclass
class MonitorStep(StepEvent):
    """A StepEvent as received over the socket: no audio, but its level envelopes."""

    env_in: list[float] = field(default_factory=list)
    env_out: list[float] = field(default_factory=list)


def decode(line: bytes | str) -> MonitorStep | NoticeEvent | dict[str, Any] | None:
    """One received line: a MonitorStep, a NoticeEvent, an info dict, or None for unknown or malformed ones."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    kind = d.get("type")
    if kind == "step":
        try:
            return _decode_step(d)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
    if kind == "notice":
        return NoticeEvent(str(d.get("level", "info")), str(d.get("message", "")), float(d.get("wall", 0.0)))
    if kind == "info":
        return d
    return None


class _Client:
    __slots__ = ("sock", "pending")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()


class MonitorServer:
    """Streams a bus to local read-only clients; see the module docstring for the protocol.

    `info` is a dict or a callable returning one (e.g. `lambda: conversation.info`); it is
    re-read about once a second and re-sent when it changes.
    """

    def __init__(
        self,
        bus: EventBus,
        info: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        path: str | Path | None = None,
        *,
        max_backlog_bytes: int = 256 * 1024,
    ) -> None:
        self.bus = bus
        self._info = info if callable(info) else (lambda: dict(info or {}))
        self.requested_path = Path(path) if path else None
        self.path: Path | None = None
        self.max_backlog_bytes = max_backlog_bytes
        self.clients_dropped = 0  # disconnected for being too slow
        self._clients: dict[int, _Client] = {}
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._subscription = None
        self._inode: int | None = None
        self._last_info: dict[str, Any] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> MonitorServer:
        path = self._choose_path()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            # The directory is 0700, so nobody else can reach the socket before this chmod.
            os.chmod(path, 0o600)
            listener.listen(16)
        except OSError as exc:
            listener.close()
            raise PPChatError(f"cannot open the monitor socket {path}: {exc.strerror}; pass another path or free this one") from exc
        listener.setblocking(False)
        self._inode = os.stat(path).st_ino
        self.path, self._listener = path, listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._subscription = self.bus.subscribe(maxlen=512, name="monitor")
        self._thread = threading.Thread(target=self._serve, name="ppchat-monitor", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, disconnect everyone and remove the socket file."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self.path is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> MonitorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def _choose_path(self) -> Path:
        if self.requested_path is not None:
            path = self.requested_path
            if path.exists():
                if _answers(path):
                    raise PPChatError(f"another ppchat is already serving {path}; pass a different --socket path")
                path.unlink()
            return path
        directory = runtime_dir()
        path = directory / SOCKET_NAME
        if path.exists():
            if not _answers(path):
                path.unlink()  # left behind by a crashed run
            else:
                path = directory / f"monitor-{os.getpid()}.sock"
                if path.exists():
                    path.unlink()
        return path

    # ---- the serving thread ---------------------------------------------------------------

    def _serve(self) -> None:
        sub, sel = self._subscription, self._selector
        next_info_check = 0.0
        while not self._stop.is_set():
            first = sub.get(timeout=0.05)
            batch = [] if first is None else [first, *sub.drain()]
            for key, mask in sel.select(timeout=0):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._service(self._clients.get(key.fileobj.fileno()), mask)
            now = time.monotonic()
            if now >= next_info_check:
                next_info_check = now + INFO_CHECK_S
                info = self._read_info()
                if info != self._last_info:
                    self._last_info = info
                    self._broadcast(encode(self._info_message(info)))
            if batch:
                data = b"".join(self._encode_event(ev) for ev in batch)
                if data:
                    self._broadcast(data)

    def _read_info(self) -> dict[str, Any]:
        try:
            return dict(self._info())
        except Exception as exc:  # a controller mid-restart must not kill the feed
            log.exception("reading the conversation's info for the monitor failed")
            return {"error": f"info unavailable: {exc}"}

    def _info_message(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"type": "info", "version": PROTOCOL_VERSION, "pid": os.getpid(), **info}

    @staticmethod
    def _encode_event(ev: object) -> bytes:
        if isinstance(ev, StepEvent):
            return encode(step_message(ev))
        if isinstance(ev, NoticeEvent):
            return encode(notice_message(ev))
        return b""

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ)
            if self._last_info is None:
                self._last_info = self._read_info()
            self._send(client, encode(self._info_message(self._last_info)))

    def _service(self, client: _Client | None, mask: int) -> None:
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            # Read-only protocol: anything a client sends is discarded; b"" means it left.
            try:
                if not client.sock.recv(4096):
                    self._drop(client)
                    return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(client)
                return
        if mask & selectors.EVENT_WRITE:
            self._send(client, b"")

    def _broadcast(self, data: bytes) -> None:
        for client in list(self._clients.values()):
            self._send(client, data)

    def _send(self, client: _Client, data: bytes) -> None:
        client.pending += data
        if len(client.pending) > self.max_backlog_bytes:
            self.clients_dropped += 1
            self._drop(client)
            return
        try:
            sent = client.sock.send(client.pending) if client.pending else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(client)
            return
        del client.pending[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.pending else 0)
        try:
            self._selector.modify(client.sock, events)
        except (KeyError, ValueError):
            pass

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self._clients.pop(fd, None)
            try:
                self._selector.unregister(client.sock)
            except (KeyError, ValueError, AttributeError):
                pass
        client.sock.close()


def connect(path: str | Path | None = None, timeout: float = 2.0) -> socket.socket:
    """A connected client socket to a running ppchat (default: the one `find_server_socket` finds)."""
    if path is None:
        found = find_server_socket()
        if found is None:
            raise PPChatError(f"no running ppchat found in {runtime_dir()}: start `ppchat talk` first, or pass --socket PATH")
        path = found
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise PPChatError(f"cannot attach to {path}: {exc.strerror or exc}; is ppchat running? (check --socket)") from exc
    sock.settimeout(None)
    return sock


def read_messages(sock: socket.socket) -> Iterator[MonitorStep | NoticeEvent | dict[str, Any]]:
    """Decoded messages until the server closes the connection."""
    with sock.makefile("rb") as stream:
        for line in stream:
            try:
                msg = decode(line)
            except ValueError:
                continue  # a torn line from a dropped connection
            if msg is not None:
                yield msg
