"""The client side of the PersonaPlex websocket protocol: one connection, on its own event-loop thread.

`ChatClient.connect` opens `/api/chat` with the query parameters, waits while the server runs
the prompts, and returns at the handshake (or raises with the server's 0x05 message). Then
`send_frame` (any thread) sends microphone frames as Ogg/Opus, and what comes back lands in
thread-safe places the step thread reads without waiting: agent audio in a `JitterBuffer`,
monologue pieces and the server's step records (0x04) in queues. It also measures what a
client can: the round trip from sending a frame to the server's record of that step, and the
jitter of the audio's arrival.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE
from ppchat.errors import PPChatError
from ppchat.net import protocol
from ppchat.net.jitter import JitterBuffer
from ppchat.net.opus import OggOpusDecoder, OggOpusEncoder, OpusStreamError
from ppchat.net.params import ChatParams
from ppchat.net.protocol import CHAT_PATH, Kind, ProtocolError

# aiohttp's default request-line limit, which NVIDIA's server keeps: a role prompt of ~900 characters
# in a non-Latin script is longer than that once percent-encoded (ppchat serve takes them all).
COMMON_LINE_LIMIT = 8190
MAX_OUTBOX = 50  # pages waiting to be sent (4 s of audio): more means the server is not reading
_SENT_SLOTS = 4096


def chat_url(server: str) -> str:
    """`ws[s]://host[:port][/path]` as given, with `/api/chat` when no path is; anything else is refused."""
    parts = urlsplit(server.strip())
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise PPChatError(f"--server {server!r} is not a websocket address; use ws://HOST:PORT or wss://HOST:PORT")
    path = parts.path if parts.path not in ("", "/") else CHAT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def http_url(chat: str, path: str) -> str:
    parts = urlsplit(chat)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, path, "", ""))


def _refusal(status: int, line: int) -> str:
    """An HTTP answer instead of the websocket, in words (aiohttp keeps no body to read it from)."""
    try:
        said = f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        said = f"HTTP {status}"
    if status == 401:
        return f"{said} (a --token is needed, or it is wrong)"
    if status == 503:
        return f"{said}: it has too many connections open; try again later"
    if status in (400, 414, 431) and line > COMMON_LINE_LIMIT:
        return (f"{said}: the request line is {line} bytes (the role prompt travels in it, percent-encoded), "
                f"more than many servers read (NVIDIA's takes {COMMON_LINE_LIMIT}); shorten the role prompt")
    return said


class ChatClient:
    def __init__(self, url: str, params: ChatParams, token: str | None = None, *, frame_size: int = FRAME_SAMPLES,
                 sample_rate: int = SAMPLE_RATE, connect_timeout: float = 10.0, handshake_timeout: float = 300.0,
                 jitter: JitterBuffer | None = None) -> None:
        self.url = chat_url(url)
        self.params = params
        self._token = token
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.jitter = jitter or JitterBuffer(frame_size, sample_rate)
        self.texts: collections.deque[str] = collections.deque(maxlen=1000)
        self.records: collections.deque[dict] = collections.deque(maxlen=1000)
        self.info: dict = {}
        # Called with the server's info (0x04) on the connection's thread as it arrives: just after the
        # handshake, so `connect` may return before it.
        self.on_info: Callable[[dict], None] | None = None
        self.error: str | None = None
        self.closed = False
        self.rtt_ms: float | None = None  # frame sent -> the server's record of that step received
        self.jitter_ms = 0.0  # smoothed deviation of audio arrivals from one per frame (RFC 3550 style)
        self._encoder = OggOpusEncoder(sample_rate, packet_ms=80, packets_per_page=1)
        self._decoder = OggOpusDecoder(sample_rate)
        self._sent_at = np.full(_SENT_SLOTS, math.nan)
        self._frames_sent = 0
        self._last_arrival: float | None = None
        # For benchmarks: set to a list to collect ("sent", frame, t), ("audio", samples, t) and
        # ("step", record, t) in the order they happen (t: time.perf_counter()).
        self.timeline: list | None = None
        self._handshake = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._outbox: asyncio.Queue | None = None
        self._ws = None
        self._thread = threading.Thread(target=self._run, name="ppchat-client", daemon=True)

    # ---------------------------------------------------------------------------- any thread

    def connect(self) -> dict:
        """Open the connection and wait for the handshake; returns the server's info (may be empty)."""
        self._thread.start()
        if not self._handshake.wait(self.connect_timeout + self.handshake_timeout):
            self.close()
            raise PPChatError(f"{self.url} did not answer within {self.handshake_timeout:g} s")
        if self.error is not None or self.closed:
            self.close()
            raise PPChatError(f"{self.url}: {self.error or 'the server closed the connection before the handshake'}")
        return self.info

    def check(self) -> None:
        """Raise once the connection is gone, with the reason."""
        if self.error is not None:
            raise PPChatError(f"{self.url}: {self.error}")
        if self.closed:
            raise PPChatError(f"{self.url} closed the connection")

    def send_frame(self, pcm: np.ndarray) -> None:
        """Encode one frame and queue it; never blocks (the step thread calls it)."""
        pages = self._encoder.encode(pcm)
        now = time.perf_counter()
        self._sent_at[self._frames_sent % _SENT_SLOTS] = now
        if self.timeline is not None:
            self.timeline.append(("sent", self._frames_sent, now))
        self._frames_sent += 1
        if pages and not self.closed:
            self._loop.call_soon_threadsafe(self._enqueue, pages)

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(5)
        self.closed = True

    # ------------------------------------------------------------------------ loop thread

    def _enqueue(self, pages: list[bytes]) -> None:
        if self._outbox is None:
            return
        if self._outbox.qsize() > MAX_OUTBOX:
            self._fail("the server is not reading (audio piled up unsent)")
            return
        for page in pages:
            self._outbox.put_nowait(page)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self._shutdown()

    def _shutdown(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._session())
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            self._handshake.set()
            self._loop.close()

    async def _session(self) -> None:
        import aiohttp

        self._outbox = asyncio.Queue()
        query = self.params.to_query()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        url = self.url + (f"?{query}" if query else "")
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.ws_connect(url, headers=headers, max_msg_size=1 << 20, autoping=True) as ws:
                    self._ws = ws
                    sender = asyncio.create_task(self._send_loop(ws))
                    try:
                        await self._receive_loop(ws)
                    finally:
                        sender.cancel()
        except aiohttp.WSServerHandshakeError as exc:
            self.error = f"the server refused the connection: {_refusal(exc.status, len(urlsplit(url).path) + 1 + len(query))}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.error = self.error or f"cannot reach the server ({type(exc).__name__}: {exc})"

    async def _send_loop(self, ws) -> None:
        while True:
            page = await self._outbox.get()
            await ws.send_bytes(protocol.audio(page))

    async def _receive_loop(self, ws) -> None:
        import aiohttp

        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            try:
                message = protocol.decode(msg.data)
                self._handle(message)
            except (ProtocolError, OpusStreamError) as exc:
                self.error = f"the server sent something this client cannot read: {exc}"
                return
            if self.error is not None:
                return

    def _handle(self, message: protocol.Message) -> None:
        kind = message.kind
        if kind == Kind.HANDSHAKE:
            self._handshake.set()
        elif kind == Kind.AUDIO:
            pcm = self._decoder.decode(message.payload)
            if pcm.size:
                self._arrived(time.perf_counter(), pcm.size)
                if self.timeline is not None:
                    self.timeline.append(("audio", pcm.size, time.perf_counter()))
                self.jitter.write(pcm)
        elif kind == Kind.TEXT:
            self.texts.append(message.text())
        elif kind == Kind.METADATA:
            self._metadata(message)
        elif kind == Kind.ERROR:
            self.error = message.text()
            self._handshake.set()

    def _metadata(self, message: protocol.Message) -> None:
        try:
            data = json.loads(message.payload)
        except ValueError:
            return  # metadata is optional and free-form in the protocol: skip what is not ours
        if not isinstance(data, dict):
            return
        if data.get("type") == "info":
            self.info = data
            if self.on_info is not None:
                self.on_info(data)
        elif data.get("type") == "step" and isinstance(data.get("step"), int):
            step = data["step"]
            sent = self._sent_at[step % _SENT_SLOTS]
            if step < self._frames_sent and not math.isnan(sent) and data.get("ms"):
                self.rtt_ms = (time.perf_counter() - sent) * 1000.0
            self.records.append(data)
            if self.timeline is not None:
                self.timeline.append(("step", data, time.perf_counter()))

    def _arrived(self, now: float, samples: int) -> None:
        if self._last_arrival is not None:
            deviation = abs((now - self._last_arrival) - samples / self.sample_rate) * 1000.0
            self.jitter_ms += (deviation - self.jitter_ms) / 16.0
        self._last_arrival = now
