"""`ppchat serve`: the PersonaPlex websocket protocol in front of the MLX engine.

`GET /api/chat` upgrades to the websocket of NVIDIA's server: query parameters first, then the
voice and role prompts run, then the handshake (0x00), then Ogg/Opus audio both ways, the
monologue as text (0x02), and, for a client that asks (`ppchat_metadata=1`, as `ppchat talk
--server` does), the server's info and per step one metadata message (0x04) with its timings.
`GET /health` answers with JSON for load balancers; `/` serves NVIDIA's web UI when there is one.

Up to `max_conversations` at once (one, or with `ppchat.served.ServedBatch` N in one batched
step); a client beyond that is told so with an 0x05 error and closed at once, so that a load
balancer or the user can go elsewhere (see `/health`). Every conversation is recorded as a
session of kind `served` and is visible to `ppchat monitor`.

Each connection is guarded on its own: a message larger than the limit, bytes that are not
Ogg/Opus, an unknown kind, a client silent for `idle_timeout` or one that stops reading for
`send_timeout` gets an 0x05 error and that connection alone closes. The engine never waits on
the network: the writer reads the event bus through a bounded queue.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from ppchat import __version__
from ppchat.constants import FRAME_SAMPLES, NO_TEXT_IDS, SAMPLE_RATE
from ppchat.conversation import NO_VOICE, Conversation
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.engine.prompts import MAX_PROMPT_CHARS
from ppchat.errors import PPChatError
from ppchat.models.voices import voice_files
from ppchat.net import protocol
from ppchat.net.endpoint import SocketAudio
from ppchat.net.opus import OggOpusDecoder, OggOpusEncoder, OpusStreamError
from ppchat.net.params import MAX_VOICE_NAME, ChatParams
from ppchat.net.protocol import CHAT_PATH, HEALTH_PATH, Kind, ProtocolError
from ppchat.sampling import Sampling, SamplingParams
from ppchat.served import ServedBatch
from ppchat.sessions.schema import step_record

log = logging.getLogger(__name__)

DEFAULT_PORT = 8998
# The request line carries the query: a text_prompt at its limit in a non-Latin script is up to 12
# bytes a character once percent-encoded (a Japanese one of 1000 characters ~9 KB), over aiohttp's
# default of 8190. This is what a query can need; a longer one is refused with an 0x05 saying so.
MAX_REQUEST_LINE = 4096 + 12 * (MAX_PROMPT_CHARS + MAX_VOICE_NAME)
# What aiohttp's parser reads before it refuses a line with its own bare 400 ("Got more than N bytes
# when reading"). Well above MAX_REQUEST_LINE, so that a line too long (a document pasted as the role
# prompt) reaches the handler and gets ppchat's sentence; bounded, as each connection buffers it.
PARSER_LINE_LIMIT = 64 * 1024
# Sent as 0x05 to every live client when the server is stopped (Ctrl-C, SIGTERM): without it a
# client sees its connection drop (1006) and cannot tell a shutdown from a network fault.
SHUTTING_DOWN = f"the server is shutting down; try again later or another server (see {HEALTH_PATH})"
# Audio a client may send ahead of real time, and what its connection's capture ring holds:
# more could not be kept anyway.
MAX_AUDIO_AHEAD = 10.0
MESSAGE_BURST_SECONDS = 4.0  # a client may send this many seconds' worth of max_message_rate at once


class _ParserRefusals(logging.Filter):
    """aiohttp logs a request it could not parse (a line over PARSER_LINE_LIMIT, a header over 8190
    bytes) as "Error handling request" with a traceback, as if the server had failed; the client was
    answered 400. One line says it, without the request's bytes (its query may hold the token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            who = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
            record.msg, record.args = "%s: request refused with HTTP %s (%s: %s)", (
                who, exc.code, type(exc).__name__, exc.message.split(":")[0][:100])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# aiohttp's own records about connections (given to it as its `logger`): under ppchat.net, so that
# `ppchat serve` shows them with its other connection lines, and tests can read them.
HTTP_LOG = logging.getLogger("ppchat.net.http")
HTTP_LOG.addFilter(_ParserRefusals())


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    static_dir: Path | None = None
    max_message_bytes: int = 64 * 1024  # an Ogg page is at most ~64 KiB; the web UI's are ~100 bytes
    idle_timeout: float = 10.0  # seconds without a message from a live client
    send_timeout: float = 5.0  # seconds a send may wait for a client that does not read
    # Audio, text and timings are ~9 KB/s. The kernel holds at most `send_buffer_bytes` of it (a few
    # seconds) and user space as much again; a client that lets more pile up is not reading.
    send_buffer_bytes: int = 16 * 1024
    max_conversations: int = 1
    max_message_rate: float = 250.0  # messages a second from one client, sustained (the web UI sends 25-50)
    # Open connections at once (websockets, /health, and connections still sending their request);
    # None = from the process's file-descriptor limit (`_connection_limit`), so that recordings and
    # logs always have some.
    max_connections: int | None = None


class Refused(Exception):
    """Ends a connection with an 0x05 error carrying this message."""


class ChatServer:
    """The aiohttp application around a `Conversation` (one client at a time) or a `ServedBatch`
    (`for_client` gives each client its own row of one batched step)."""

    def __init__(self, conversation: Conversation, options: ServeOptions | None = None) -> None:
        self.conversation = conversation
        self.options = options or ServeOptions()
        self.running = 0  # conversations in progress (connections past the busy check)
        self.served = 0
        self.leaving = 0  # conversations whose connection is over, being stopped and saved (still counted in running)
        self.stopping = False  # `shutdown` has begun: live conversations end, new ones are refused
        self._ending: set[asyncio.Event] = set()  # each live connection's `ended`
        self._handlers: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------ app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_message_bytes)
        app.router.add_get(CHAT_PATH, self.handle_chat)
        app.router.add_get(HEALTH_PATH, self.handle_health)
        static = self.options.static_dir
        if static is not None:
            app.router.add_get("/", self._index)
            app.router.add_static("/", static, follow_symlinks=False, show_index=False)
        else:
            app.router.add_get("/", self._no_ui)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(Path(self.options.static_dir) / "index.html")

    async def _no_ui(self, request: web.Request) -> web.Response:
        return web.Response(
            text=f"ppchat serve {__version__}: the PersonaPlex websocket is at {CHAT_PATH}, health at {HEALTH_PATH}. "
                 "No web UI here: pass --static DIR, or `ppchat download` to fetch NVIDIA's.\n"
        )

    def health(self) -> dict:
        info = self.conversation.info
        return {
            "status": "busy" if self.running >= self.options.max_conversations else "ok",
            "model": info["model_id"],
            "is_demo": info["is_demo"],
            "quantization": info["quantization"],
            "version": __version__,
            "conversations": {"running": self.running, "allowed": self.options.max_conversations},
            "voices": self.conversation.voices(),
            "served": self.served,
        }

    async def handle_health(self, request: web.Request) -> web.Response:
        body = self.health()
        # 503 while full, so that a load balancer's health check sends the next user elsewhere.
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    # ----------------------------------------------------------------------------- chat

    def _authorised(self, request: web.Request) -> bool:
        token = self.options.token
        if token is None:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":  # the scheme is case-insensitive (RFC 9110 §11.1)
            given = header[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(status=401, text="a token is required: add ?token=... or 'Authorization: Bearer ...'\n")
        # No permessage-deflate (browsers offer it): Opus does not deflate, so it was work for nothing on
        # every page both ways, and a client could send small messages that inflate up to the size limit.
        ws = web.WebSocketResponse(max_msg_size=2 * self.options.max_message_bytes, timeout=2.0, autoping=True,
                                   compress=False)
        if not ws.can_prepare(request).ok:  # a browser opened the address, say: aiohttp's "No WebSocket UPGRADE hdr"
            return web.Response(status=400, text=(
                f"{CHAT_PATH} is the PersonaPlex websocket: connect with a websocket client such as "
                "`ppchat talk --server ws://HOST:PORT`, or open / for the web UI\n"))
        self._bound_send_buffer(request)
        await ws.prepare(request)
        client = _peer(request)
        free = await self._slot_free()
        if self.stopping:
            await _close_with_error(ws, request, SHUTTING_DOWN)
            return ws
        if not free:
            await _close_with_error(ws, request, (
                f"busy: this server runs {self.options.max_conversations} conversation(s) at a time and all are taken; "
                f"try again later or another server (see {HEALTH_PATH})"))
            return ws
        self.running += 1
        handler = asyncio.current_task()
        self._handlers.add(handler)
        shown = ", ".join(f"{k}={v[:60]}" for k, v in request.query.items() if k != "token")  # never log the secret
        log.info("%s connected: %s", client, shown or "no parameters")
        try:
            reason = await self._converse(ws, request, client)
        except Refused as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("conversation with %s failed", client)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self.running -= 1
            self._handlers.discard(handler)
        if not reason and self.stopping:
            reason = SHUTTING_DOWN
        if reason:
            log.info("%s closed: %s", client, reason)
            await _close_with_error(ws, request, reason)
        else:
            log.info("%s left", client)
            if not ws.closed:
                await _close(ws, request)
        return ws

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request, client: str) -> str | None:
        """Run one conversation; returns why it ended badly (sent as 0x05), or None."""
        try:
            params = ChatParams.from_query(request.query)  # a text_prompt over its limit is named first
        except ProtocolError as exc:
            raise Refused(str(exc)) from None
        _check_request_line(request)
        voice = self._voice(params.voice_prompt)
        sampling, unapplied = self._sampling(params)
        conv = self.conversation.for_client()  # with --max-conversations N, a row of the batch
        audio = SocketAudio(SAMPLE_RATE, FRAME_SAMPLES, capture_seconds=MAX_AUDIO_AHEAD)
        live = asyncio.Event()
        sub = conv.bus.subscribe(maxlen=64, name=f"serve {client}")
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()  # the connection is over: the reader and writer end on it, cancelled or not
        self._ending.add(ended)
        reader = asyncio.create_task(self._receive(ws, audio, live, ended))
        start = loop.run_in_executor(None, lambda: conv.start(
            voice, params.text_prompt, audio=audio, sampling=sampling, client=client))
        reason: str | None = None
        try:
            await asyncio.wait({reader, start}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # the client left or misbehaved during the prompts: they are given up
                conv.abandon_start()  # at their next chunk, rather than run to the end for nobody
                await asyncio.wait({start})
                start.exception()  # ConditioningCancelled, as a rule: nothing went live, nothing was recorded
                reason = await _outcome(reader)
                return reason
            try:
                start.result()
            except PPChatError as exc:
                raise Refused(str(exc)) from None
            self.served += 1
            if unapplied:
                log.info("%s: %s", client, unapplied)
                conv.bus.publish(NoticeEvent("warning", unapplied, time.time()))  # into the session's log
            if conv is not self.conversation and conv.monitor is not None:
                log.info("%s: ppchat monitor --socket %s", client, conv.monitor.path)
            send = functools.partial(self._send, ws, request.transport)
            info = self._info_message(conv, sampling, unapplied)
            reason = await _outcome(self._live(send, sub, conv, audio, live, reader, ended,
                                               info if params.metadata else None, client))
            return reason
        finally:
            ended.set()
            self._ending.discard(ended)
            reader.cancel()
            audio.finish()
            if not reason and self.stopping:
                reason = SHUTTING_DOWN
            if reason and reason != SHUTTING_DOWN and conv.running:  # into the session's log: why the conversation ended
                conv.bus.publish(NoticeEvent("warning", f"{client}: {reason}", time.time()))
            cancelled = False
            self.leaving += 1
            try:
                if reason:  # at once: the client need not wait while the conversation stops and is saved
                    cancelled = await _despite_cancellation(_close_with_error(ws, request, reason))
                sub.close()
                # A stop must not overtake a start still running in its thread (that conversation would
                # then run on with nobody to stop it), and a cancelled handler still stops and saves.
                cancelled |= await _despite_cancellation(start)
                stopped = loop.run_in_executor(None, conv.stop if conv is self.conversation else conv.close)
                cancelled |= await _despite_cancellation(stopped)
            finally:
                self.leaving -= 1  # handle_chat frees the slot next, with no await in between
            if cancelled:
                raise asyncio.CancelledError
            stopped.result()

    async def _slot_free(self, wait: float = 5.0) -> bool:
        """Whether a conversation can start now. A slot whose client has gone stays taken while that
        conversation is stopped and saved (a fraction of a second, seconds on a busy machine): a client
        that reconnects at once (a new voice, the web UI's next try) waits for it instead of being told
        "busy". Nobody waits for a conversation still in progress: the server does not queue."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.running >= self.options.max_conversations:
            if not self.leaving or self.stopping or loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True  # the caller takes the slot before its next await

    async def shutdown(self, timeout: float) -> None:
        """End every live conversation with an 0x05 SHUTTING_DOWN, stopped and saved as when its client
        leaves, waiting up to `timeout` s for them; new connections are refused meanwhile."""
        self.stopping = True
        for ended in list(self._ending):
            ended.set()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)

    async def _live(self, send, sub, conv: Conversation, audio: SocketAudio, live: asyncio.Event, reader: asyncio.Task,
                    ended: asyncio.Event, info: dict | None, client: str) -> str | None:
        live.set()  # before the handshake leaves: a client may answer it at once
        await send(protocol.handshake())
        if info is not None:
            await send(protocol.metadata(info))
        writer = asyncio.create_task(self._write(send, sub, conv, audio, ended, info is not None, client))
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        # Cancelling alone is not enough: on Python < 3.12 `asyncio.wait_for` (in `_send`) drops a
        # cancellation that arrives as its send completes, and the writer would then wait for steps
        # that never come while this waited for it. `ended` ends both loops within a poll either way.
        ended.set()
        for task in (reader, writer):
            if task not in done:
                task.cancel()
        await asyncio.wait({reader, writer}, timeout=5.0)
        first = writer if writer in done else reader
        # The other one may fail as it is cancelled (a send to the closing socket): a consequence of the
        # first's outcome, not news; read it, or asyncio prints "Task exception was never retrieved".
        (reader if first is writer else writer).add_done_callback(_retrieve)
        return await first

    async def _receive(self, ws: web.WebSocketResponse, audio: SocketAudio, live: asyncio.Event,
                       ended: asyncio.Event) -> str | None:
        """Read until the client leaves; audio before the handshake is read and dropped, as the reference does."""
        decoder = OggOpusDecoder(audio.capture_rate)
        limit = self.options.max_message_bytes
        rate = self.options.max_message_rate
        last = time.monotonic()
        allowance = MESSAGE_BURST_SECONDS * rate  # a token bucket: bursts are fine, a flood is not
        audio_allowance = MAX_AUDIO_AHEAD  # seconds of audio; refills at one second a second
        while not ended.is_set():
            try:
                msg = await ws.receive(timeout=0.5)
            except asyncio.TimeoutError:
                if live.is_set() and time.monotonic() - last > self.options.idle_timeout:
                    return f"no message from the client for {self.options.idle_timeout:g} s"
                continue
            now = time.monotonic()
            allowance = min(MESSAGE_BURST_SECONDS * rate, allowance + (now - last) * rate) - 1
            audio_allowance = min(MAX_AUDIO_AHEAD, audio_allowance + (now - last))
            last = now
            if allowance < 0:
                # Queued messages come back without a pause: a flood of tiny ones kept the event loop
                # (every other connection's audio) and the step thread waiting on this one.
                raise ProtocolError(f"too many messages: more than {rate:g} a second (audio needs at most 50); "
                                    "send fewer, larger ones")
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return None
            if msg.type == WSMsgType.ERROR:
                return f"websocket error: {ws.exception()}"
            if msg.type == WSMsgType.TEXT:
                raise ProtocolError("text frames are not part of the protocol; send binary messages")
            if msg.type != WSMsgType.BINARY:
                continue
            if len(msg.data) > limit:
                raise ProtocolError(f"a message of {len(msg.data)} bytes is over the limit of {limit}")
            message = protocol.decode(msg.data)
            if message.kind == Kind.AUDIO and live.is_set():
                pcm = decoder.decode(message.payload)
                audio_allowance -= pcm.size / audio.capture_rate
                if audio_allowance < 0:
                    # A 6 KB page can hold 5 s of audio: a few hundred a second kept the event loop
                    # decoding, and a batch's other conversations waiting, for audio that is dropped.
                    raise ProtocolError(f"the client sends audio faster than it is recorded (more than "
                                        f"{MAX_AUDIO_AHEAD:g} s ahead of real time); send it as it is captured")
                if pcm.size:
                    audio.push(pcm)
            # Control, text, ping and metadata from a client mean nothing to this server (nor the reference's).
        return None

    async def _write(self, send, sub, conv: Conversation, audio: SocketAudio, ended: asyncio.Event,
                     metadata: bool, client: str) -> str | None:
        """Send each step's audio, text and timings as the step thread publishes them."""
        encoder = OggOpusEncoder(audio.playback_rate, packet_ms=80, packets_per_page=1)
        loop = asyncio.get_running_loop()
        while not ended.is_set():
            event = await loop.run_in_executor(None, sub.get, 0.25)
            if event is None:
                if not conv.running:
                    return "the engine stopped"
                continue
            if isinstance(event, NoticeEvent):
                if event.level == "error":
                    runtime = conv.runtime
                    if runtime is None or runtime.error is not None:  # set before the engine publishes it
                        return f"the engine stopped: {event.message}"
                    # The recording failed (not started, disk full): the conversation goes on, as at the
                    # console; the client needs no word of it, the operator does.
                    log.warning("%s: %s", client, event.message)
                continue
            if not isinstance(event, StepEvent):
                continue
            for frame in audio.take_frames():
                for page in encoder.encode(frame):
                    await send(protocol.audio(page))
            if event.text_piece and event.text_token not in NO_TEXT_IDS:  # never sent as text, as the reference does
                await send(protocol.text(event.text_piece))
            if metadata:
                await send(protocol.metadata({"type": "step", **step_record(event)}))
        return None

    def _bound_send_buffer(self, request: web.Request) -> None:
        # Without this the kernel grows a socket's send buffer to megabytes: minutes of this
        # stream would vanish into a client that never reads before anything noticed.
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.options.send_buffer_bytes)

    async def _send(self, ws: web.WebSocketResponse, transport, data: bytes) -> None:
        await asyncio.wait_for(ws.send_bytes(data), self.options.send_timeout)
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        if unsent > self.options.send_buffer_bytes:
            raise Refused(f"the client is not reading ({unsent} bytes waiting to be sent)")

    def _info_message(self, conv: Conversation, sampling: Sampling, unapplied: str | None) -> dict:
        info = conv.info
        message = {"type": "info", "version": __version__, "model": info["model_id"], "is_demo": info["is_demo"],
                   "quantization": info["quantization"], "voice": info["voice"], "prompt": info["prompt"],
                   "sampling": sampling.to_json(), "max_conversations": self.options.max_conversations}
        if unapplied:
            message["note"] = unapplied
        return message

    def _voice(self, requested: str | None) -> str | None:
        """The voice file for a `voice_prompt` name, looked up in the voices folder only."""
        if requested is None:
            return None
        usable = voice_files(self.conversation.model.voices_dir)
        for p in usable:
            if requested in (p.name, p.stem):
                return str(p.resolve())
        if requested in (NO_VOICE, f"{NO_VOICE}.pt") and NO_VOICE in self.conversation.voices():
            return NO_VOICE  # listed by /health (the demo's only voice), so the console's picker offers it
        names = ", ".join(p.name for p in usable) or "none (this model has no voices folder; leave voice_prompt out)"
        raise Refused(f"voice_prompt {requested!r} is not in this server's voices folder; available: {names}")

    def _sampling(self, params: ChatParams) -> tuple[Sampling, str | None]:
        """The settings a connection runs with, and what it asked for that is not applied (or None).

        One conversation at a time honours every parameter. A batch (`--max-conversations N` > 1)
        draws every row in one sampling step at its own temperatures and top-k: a client that asks
        for others still talks, at the batch's values, and is told so (0x04 info, the session's log,
        the server's log) rather than refused, as NVIDIA's web UI always sends its own values."""
        base = self.conversation.options.sampling
        text = SamplingParams(
            base.text.temp if params.text_temperature is None else params.text_temperature,
            base.text.top_k if params.text_topk is None else params.text_topk,
        )
        audio = SamplingParams(
            base.audio.temp if params.audio_temperature is None else params.audio_temperature,
            base.audio.top_k if params.audio_topk is None else params.audio_topk,
        )
        wanted = Sampling(text, audio, seed=base.seed if params.seed is None else params.seed)
        if not isinstance(self.conversation, ServedBatch):
            return wanted, None
        applied = self.conversation.row_sampling(wanted.seed)
        asked = {name: value for name, value, batch in (
            ("text_temperature", params.text_temperature, base.text.temp), ("text_topk", params.text_topk, base.text.top_k),
            ("audio_temperature", params.audio_temperature, base.audio.temp), ("audio_topk", params.audio_topk, base.audio.top_k),
        ) if value is not None and value != batch}
        if not asked:
            return applied, None
        return applied, (
            "sampling " + ", ".join(f"{k}={v:g}" for k, v in asked.items()) + " not applied: this server steps "
            f"{self.options.max_conversations} conversations in one batch at text temperature {base.text.temp:g}, "
            f"top-k {base.text.top_k}, audio temperature {base.audio.temp:g}, top-k {base.audio.top_k}")


async def _outcome(awaitable) -> str | None:
    """Why a connection's task ended: None when the client simply left, else the message for 0x05."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        return None
    except (ProtocolError, OpusStreamError, Refused) as exc:
        return str(exc)
    except (asyncio.TimeoutError, TimeoutError):
        return "the client stopped reading (a send timed out)"
    except ConnectionError:
        return None


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


async def _despite_cancellation(awaitable) -> bool:
    """Wait for `awaitable` to end even if this task is cancelled meanwhile; True if it was
    (the caller passes the cancellation on once its clean-up is done)."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _check_request_line(request: web.Request) -> None:
    size = len(request.raw_path.encode("utf-8", "replace"))  # as sent: percent-encoded, or raw bytes
    if size <= MAX_REQUEST_LINE:
        return
    pairs = [pair.partition("=") for pair in request.rel_url.raw_query_string.split("&")]
    name, _, _ = max(pairs, key=lambda pair: len(pair[0]) + len(pair[2]))
    raise Refused(
        f"the request line is {size} bytes; this server accepts up to {MAX_REQUEST_LINE} (a text_prompt of "
        f"{MAX_PROMPT_CHARS} characters in any script fits); shorten the query parameter {name[:40]!r}")


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote or "unknown")


async def _close_with_error(ws: web.WebSocketResponse, request: web.Request, message: str) -> None:
    if not ws.closed:
        try:
            await asyncio.wait_for(ws.send_bytes(protocol.error(message)), 2.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
    await _close(ws, request)


async def _close(ws: web.WebSocketResponse, request: web.Request) -> None:
    try:
        await asyncio.wait_for(ws.close(), 2.0)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        if request.transport is not None:
            request.transport.abort()  # a client that never reads never answers the close either


# ---------------------------------------------------------------------------------- running


class ServerThread:
    """Runs a `ChatServer` on its own event loop thread (tests, benchmarks, embedding)."""

    def __init__(self, server: ChatServer, ssl_context=None) -> None:
        self.server = server
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.error: BaseException | None = None
        # Set by the thread as its last act. Waited on rather than Thread.join: a Ctrl-C landing inside
        # join(timeout) makes CPython < 3.13 mark the thread as stopped while it still runs, and the
        # process would then exit under a thread still closing connections and logging.
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppchat-serve", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            try:
                self._runner, self.port = self._loop.run_until_complete(_start_site(self.server, self._ssl))
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                self.error = exc
                self._ready.set()
                return
            self._ready.set()
            self._loop.run_forever()
            self._loop.close()
        finally:
            self._finished.set()

    async def _shutdown(self) -> None:
        # Stop listening, end the live conversations in order (each client is told why, each
        # recording is finalised), then close what is left and let the handlers finish.
        for site in list(self._runner.sites):
            await site.stop()
        await self.server.shutdown(timeout=10.0)
        await self._runner.cleanup()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C reaches the caller: the wait wakes up twice a second)."""
        while not self._finished.wait(0.5):
            pass

    def stop(self) -> None:
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
            except Exception:
                log.exception("the server did not shut down cleanly")
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread.is_alive():
            self._finished.wait(15)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


ACCEPT_BACKLOG = 128  # aiohttp's: asyncio accepts up to this many connections at once, each an fd until refused


def _connection_limit() -> int:
    """Half of the file descriptors left once a full accept batch is counted (64 with macOS' default
    limit of 256, 448 with Linux' 1024): the rest is for recordings, logs and the model's files."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(8, min(4096, (soft - ACCEPT_BACKLOG) // 2))


class _TooMany(asyncio.Protocol):
    """Answers a connection over the limit with a 503 that says so, and closes it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connection_made(self, transport) -> None:
        text = (f"too many connections: this server holds at most {self.limit} at once; "
                f"try again later or another server (see {HEALTH_PATH})\n").encode()
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
        transport.close()


class _Runner(web.AppRunner):
    """An AppRunner whose listening socket refuses connections beyond `limit` (aiohttp has no cap:
    clients that open connections and never finish a request would take every file descriptor, and
    with them every new client and the recordings' files)."""

    def __init__(self, app: web.Application, limit: int, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.limit = limit

    @property
    def server(self):  # the protocol factory each accepted connection goes through
        inner = super().server
        if inner is None:
            return None

        def factory():
            return _TooMany(self.limit) if len(inner.connections) >= self.limit else inner()

        return factory


async def _start_site(server: ChatServer, ssl_context) -> tuple[web.AppRunner, int]:
    options = server.options
    # keepalive_timeout: a connection must send its request within the idle timeout (aiohttp's default
    # in 3.14 is an hour); it does not touch a live websocket, whose own timeouts are the server's.
    runner = _Runner(server.app(), options.max_connections or _connection_limit(), handle_signals=False,
                     access_log=None, shutdown_timeout=3.0, max_line_size=PARSER_LINE_LIMIT, logger=HTTP_LOG,
                     keepalive_timeout=options.idle_timeout)
    await runner.setup()
    site = web.TCPSite(runner, server.options.host, server.options.port, ssl_context=ssl_context,
                       backlog=ACCEPT_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PPChatError(
            f"cannot listen on {server.options.host}:{server.options.port} ({exc.strerror or exc}); "
            "pick another --port or stop what is using it"
        ) from None
    addresses = runner.addresses  # the port really bound (port 0 picks a free one)
    port = addresses[0][1] if addresses else server.options.port
    return runner, port
