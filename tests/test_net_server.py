"""`ppchat serve` on loopback with the demo model: the reference's protocol, shaped as its clients
shape it, and every hostile input of the issue's list (one connection closes, the server goes on)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("sphn")

from ppchat.conversation import Conversation, TalkOptions  # noqa: E402
from ppchat.models.loader import load_model  # noqa: E402
from ppchat.net import ogg, protocol  # noqa: E402
from ppchat.net.opus import OggOpusDecoder, OggOpusEncoder, frame_samples_48k, split_frames  # noqa: E402
from ppchat.net.protocol import Kind  # noqa: E402
from ppchat.net.server import ChatServer, ServeOptions, ServerThread  # noqa: E402
from ppchat.sampling import Sampling  # noqa: E402
from ppchat.sessions.store import list_sessions, load_session  # noqa: E402

WEB_UI_QUERY = ("voice_prompt=&text_prompt=You+enjoy+having+a+good+conversation.&seed=123&text_temperature=0.5"
                "&text_topk=20&audio_temperature=0.6&audio_topk=100&pad_mult=0&repetition_penalty=1.0"
                "&repetition_penalty_context=64&text_seed=1&audio_seed=2")


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    model = load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)
    # No dropping here: on a shared 2-core machine the demo's steps are near real time, and the
    # exactness checks want every frame stepped (test_late_steps_keep_the_delay_bounded sets 3).
    options = TalkOptions(model="demo", sessions_dir=tmp_path_factory.mktemp("sessions"), monitor=False,
                          sampling=Sampling(seed=1), max_backlog_frames=10_000)
    with Conversation(options, model=model) as conv:
        yield conv


@pytest.fixture
def server(conversation):
    # One per test (the expensive part, the model, is the module's): a test that leaves a handler
    # stuck takes only its own server down with it.
    chat = ChatServer(conversation, ServeOptions(port=0, idle_timeout=60.0, send_timeout=1.0, max_message_bytes=8192))
    with ServerThread(chat) as thread:
        yield thread


IDLE_TIMEOUT = 30.0  # a conversation's stop (steps to finish, the recording to close) on a loaded 2-core machine


@pytest.fixture(autouse=True)
def idle(request):
    """Each test starts with no conversation running and leaves none behind. One left running fails
    the test that left it (at teardown) and is stopped here, so the next test is not its victim."""
    if "conversation" not in request.fixturenames:
        yield
        return
    conversation = request.getfixturevalue("conversation")
    _wait_until(lambda: not conversation.running, "a conversation was already running")
    yield
    if not _wait_until(lambda: not conversation.running, None):
        conversation.stop()
        pytest.fail(f"the test left a conversation running for {IDLE_TIMEOUT:g} s after its server stopped")


def _wait_until(ready, failure: str | None, timeout: float = IDLE_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            assert failure is None, failure
            return False
        time.sleep(0.05)
    return True


def _wait_idle(thread: ServerThread) -> None:
    """Until the server's last conversation is fully finished (stopped, recording saved)."""
    _wait_until(lambda: not (thread.server.running or thread.server.conversation.running),
                "the previous conversation did not finish")


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 24000)
    t = np.arange(n) / 24000
    tone = 0.25 * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.7 * t)) * t)
    return (tone * (np.sin(2 * np.pi * 1.1 * t) > -0.3) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@dataclass
class Transcript:
    messages: list[tuple[int, bytes]] = field(default_factory=list)  # (kind, payload) in arrival order
    close_code: int | None = None
    sent_audio: list[bytes] = field(default_factory=list)  # the Ogg pages this client sent

    def of(self, kind: Kind) -> list[bytes]:
        return [p for k, p in self.messages if k == kind]

    @property
    def errors(self) -> list[str]:
        return [p.decode() for p in self.of(Kind.ERROR)]

    def steps(self) -> list[dict]:
        return [m for m in (json.loads(p) for p in self.of(Kind.METADATA)) if m.get("type") == "step"]


async def _converse(port: int, query: str = "", pcm: np.ndarray | None = None, *, packet_ms: int = 20,
                    per_page: int = 2, chunk: int = 480, extra: list[bytes] = (), linger: float = 0.6,
                    headers: dict | None = None, until_steps: int | None = None, metadata: bool = True) -> Transcript:
    """Connect, wait for the handshake, stream `pcm` in real time (the web UI sends each page as it is made),
    send `extra` raw messages, then keep reading for `linger` seconds (or until `until_steps` steps came) and close.
    `metadata` asks for the 0x04 messages (steps) that the tests read, as ppchat's client does."""
    out = Transcript()
    if metadata:
        query = "&".join(q for q in (query, "ppchat_metadata=1") if q)
    url = f"ws://127.0.0.1:{port}/api/chat" + (f"?{query}" if query else "")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers) as ws:
            handshake = asyncio.Event()

            async def read():
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        out.messages.append((msg.data[0], msg.data[1:]))
                        if msg.data[0] == Kind.HANDSHAKE:
                            handshake.set()
                handshake.set()

            reader = asyncio.create_task(read())
            await asyncio.wait_for(handshake.wait(), 30)
            if pcm is not None and not ws.closed:
                encoder = OggOpusEncoder(packet_ms=packet_ms, packets_per_page=per_page)
                t0 = time.monotonic()
                for i in range(0, len(pcm), chunk):
                    try:
                        for page in encoder.encode(pcm[i:i + chunk]):
                            await ws.send_bytes(protocol.audio(page))
                            out.sent_audio.append(page)
                    except ConnectionResetError:  # the server closed this connection (its 0x05 is read)
                        break
                    await asyncio.sleep(max(0.0, t0 + (i + chunk) / 24000 - time.monotonic()))
            for raw in extra:
                if not ws.closed:
                    await ws.send_bytes(raw)
            deadline = time.monotonic() + linger
            while not reader.done() and time.monotonic() < deadline:
                if until_steps is not None and len(out.steps()) >= until_steps:
                    break
                await asyncio.sleep(0.05)
            await ws.close()
            await reader
            out.close_code = ws.close_code
    return out


def _talk(port, *args, **kwargs) -> Transcript:
    return asyncio.run(_converse(port, *args, **kwargs))


def _newest_session(thread: ServerThread):
    _wait_idle(thread)  # the recording is finished once the connection's handler is
    sessions = [load_session(s.path) for s in list_sessions(thread.server.conversation.options.sessions_dir)]
    return max(sessions, key=lambda s: s.info.started)  # folder names only resolve seconds


def test_a_web_ui_shaped_conversation(server, conversation):
    sent = _speech(4.0)
    t = _talk(server.port, WEB_UI_QUERY, sent, linger=30.0, until_steps=len(sent) // 1920)
    kinds = [k for k, _ in t.messages]
    assert t.errors == []
    assert kinds[0] == Kind.HANDSHAKE  # the prompts ran before it; nothing comes earlier
    audio = t.of(Kind.AUDIO)
    assert audio[0].startswith(b"OggS") and b"OpusHead" in audio[0][:40]
    assert b"OpusTags" in audio[1][:40]
    # After the header pages: one page per message, one 80 ms Opus packet per page (libopus permitting).
    pages = [ogg.parse_pages(a) for a in audio[2:]]
    assert all(rest == b"" and len(p) == 1 for p, rest in pages)
    durations = [sum(frame_samples_48k(k[0]) * len(split_frames(k)[1]) for k in p[0].packets) for p, _ in pages]
    assert sum(d == 3840 for d in durations) >= 0.8 * len(durations)
    steps = t.steps()
    assert len(steps) >= 40 and [s["step"] for s in steps] == list(range(len(steps)))
    computed = [s for s in steps if s.get("filled") not in ("agent", "both")]  # not dropped by the late-frame policy
    assert len(computed) >= 40
    assert all(set(s["ms"]) >= {"total", "encode", "temporal", "depformer", "decode"} for s in computed)
    texts = [p.decode() for p in t.of(Kind.TEXT)]
    assert texts and all(texts) and texts == [s["piece"] for s in steps if s.get("piece")]
    decoder = OggOpusDecoder()
    received = np.concatenate([decoder.decode(a) for a in audio])
    assert len(received) == 1920 * len(audio[2:])

    session = _newest_session(server)
    meta = session.info.meta
    assert meta.kind == "served" and meta.client.startswith("127.0.0.1:")
    assert meta.role_prompt == "You enjoy having a good conversation."
    assert session.info.meta.sampling == {"text_temp": 0.5, "text_top_k": 20, "audio_temp": 0.6, "audio_top_k": 100, "seed": 123}
    assert session.frames >= len(steps)
    # The server heard exactly what was sent (the decoded stream, frame by frame, dropped frames included) ...
    import soundfile

    heard, _ = soundfile.read(session.path / "user.wav", dtype="float32")
    said, _ = soundfile.read(session.path / "agent.wav", dtype="float32")
    decoder = OggOpusDecoder()
    sent_pcm = np.concatenate([decoder.decode(p) for p in t.sent_audio])
    n = min(len(heard), len(sent_pcm)) // 1920 * 1920 - 1920  # the last frame may be zero-padded
    assert n >= 40 * 1920
    np.testing.assert_array_equal(heard[:n], sent_pcm[:n])
    # ... and sent back exactly the Opus coding of what it recorded as the agent's side.
    frames = [said[s["step"] * 1920:(s["step"] + 1) * 1920] for s in computed]
    encoder = OggOpusEncoder(packet_ms=80, packets_per_page=1)
    expected = [page for f in frames for page in encoder.encode(f)]
    got_packets = ogg.packets_of(ogg.parse_pages(b"".join(audio))[0])
    want_packets = ogg.packets_of(ogg.parse_pages(b"".join(expected))[0])
    assert len(got_packets) >= 40 and got_packets == want_packets[:len(got_packets)]


def test_without_asking_a_client_gets_no_metadata(server):
    # The web UI and Kyutai's client would log an error or a warning for each 0x04.
    t = _talk(server.port, WEB_UI_QUERY, _speech(2.0), metadata=False, linger=5.0)
    kinds = {k for k, _ in t.messages}
    assert t.errors == [] and Kind.METADATA not in kinds and {Kind.HANDSHAKE, Kind.AUDIO, Kind.TEXT} <= kinds
    assert len(t.of(Kind.AUDIO)) >= 20


def test_a_client_with_no_query_parameters_gets_the_servers_defaults(server, conversation):
    # Kyutai's client: no parameters at all; its encoder's layout is the reference server's (80 ms per page).
    t = _talk(server.port, "", _speech(2.0, seed=2), packet_ms=80, per_page=1, chunk=1920, linger=5.0, metadata=False)
    assert t.errors == [] and len(t.of(Kind.AUDIO)) >= 15
    session = _newest_session(server)
    assert session.frames >= 15
    meta = session.info.meta
    assert meta.role_prompt == conversation.prompt_text and meta.sampling["audio_temp"] == 0.8


@pytest.mark.parametrize("raw,expected", [
    (protocol.audio(b"this is not an Ogg stream at all"), "not a valid Ogg/Opus stream"),
    (b"\x09\x00\x01", "unknown message kind 0x09"),
    (protocol.audio(b"OggS" + bytes(9000)), "over the limit of 8192"),
])
def test_a_bad_message_gets_an_error_and_closes_that_connection_only(server, raw, expected):
    t = _talk(server.port, "", _speech(0.5), extra=[raw], linger=5.0)
    assert len(t.errors) == 1 and expected in t.errors[0]
    assert t.messages[-1][0] == Kind.ERROR
    _wait_idle(server)
    again = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=10)  # the server goes on
    assert again.errors == [] and len(again.steps()) >= 5


def test_a_flood_of_messages_is_refused_and_the_server_goes_on(server):
    # Queued messages are read without a pause: 250 000 tiny ones in two seconds from one client kept
    # the event loop on it, and the other conversations of a batch got 1 step in 7 s instead of 75.
    t = _talk(server.port, "", _speech(0.5), extra=[protocol.encode(Kind.PING)] * 5000, linger=5.0)
    assert t.errors == ["too many messages: more than 250 a second (audio needs at most 50); send fewer, larger ones"]
    _wait_idle(server)
    again = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=5)  # a burst as the web UI sends is fine
    assert again.errors == [] and len(again.steps()) >= 5


def test_compression_is_not_negotiated(server):
    # Browsers offer permessage-deflate; Opus does not deflate, and inflating is a client's lever.
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{server.port}/api/chat", compress=15) as ws:
                return ws.compress

    assert asyncio.run(main()) == 0
    _wait_idle(server)


def test_audio_far_ahead_of_real_time_is_refused_and_the_server_goes_on(server):
    # A 6 KB page can hold 5 s of audio: a client sending such pages as fast as it could kept the event
    # loop decoding audio that the capture ring then dropped (a batch's other conversation got 1 step
    # in 7 s instead of 75). 30 s sent at once is refused once it is 10 s ahead.
    encoder = OggOpusEncoder(packet_ms=20, packets_per_page=2)
    pcm = _speech(30.0, seed=4)
    pages = [protocol.audio(page) for i in range(0, len(pcm), 4800) for page in encoder.encode(pcm[i:i + 4800])]
    t = _talk(server.port, "", None, extra=pages, linger=5.0)
    assert t.errors == ["the client sends audio faster than it is recorded (more than 10 s ahead of real time); "
                        "send it as it is captured"]
    assert _newest_session(server).frames >= 1  # its conversation is recorded as far as it was stepped
    again = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=5)
    assert again.errors == [] and len(again.steps()) >= 5


def test_a_bad_message_ends_the_conversation_even_when_a_send_swallows_the_cancellation(server, monkeypatch):
    # On Python < 3.12, asyncio.wait_for (as in ChatServer._send) returns normally when the send it
    # waits on completes as a cancellation arrives: the cancellation is lost. Here every send is slow
    # and does just that, so the writer is (nearly) always in one when the bad message ends the
    # connection. Cancelling it must not be the only way to end it, or this handler waits forever.
    real = server.server._send

    async def send_that_ignores_cancellation(ws, transport, data):
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            pass
        await real(ws, transport, data)

    monkeypatch.setattr(server.server, "_send", send_that_ignores_cancellation)
    t = _talk(server.port, "", _speech(0.5), extra=[b"\x09\x00\x01"], linger=5.0)
    assert len(t.errors) == 1 and "unknown message kind 0x09" in t.errors[0]
    _wait_idle(server)


def test_the_error_comes_before_a_slow_stop(server, conversation, monkeypatch):
    # Stopping a conversation waits for its step thread and saves the recording: seconds on a busy
    # machine. The client is told why its connection ends at once, not after that.
    real = conversation.stop
    stopping = []

    def slow_stop(*args, **kwargs):
        stopping.append(time.monotonic())
        time.sleep(6.0)
        real(*args, **kwargs)

    monkeypatch.setattr(conversation, "stop", slow_stop)
    t = _talk(server.port, "", _speech(0.5), extra=[b"\x09\x00\x01"], linger=5.0)
    assert stopping and len(t.errors) == 1 and "unknown message kind 0x09" in t.errors[0]
    _wait_idle(server)


@pytest.mark.parametrize("query,expected", [
    ("voice_prompt=../../../etc/passwd", "not a voice name"),
    ("voice_prompt=NATF2.pt", "not in this server's voices folder"),
    ("text_temperature=hot", "text_temperature"),
    ("text_prompt=" + "x" * 1200, "text_prompt has 1200 characters"),
    # Request lines longer than a valid query needs, which aiohttp refused with its own bare 400.
    ("text_prompt=" + "x" * 30_000, "text_prompt has 30000 characters; the limit is 1000"),
    # 20049 = len("/api/chat?" "text_prompt=Hi&email=" + 20000 * "y" + "&ppchat_metadata=1"), as _talk sends it
    ("text_prompt=Hi&email=" + "y" * 20_000, "the request line is 20049 bytes; this server accepts up to 17632 "
     "(a text_prompt of 1000 characters in any script fits); shorten the query parameter 'email'"),
])
def test_a_bad_query_is_refused_before_anything_runs(server, conversation, query, expected):
    before = len(list_sessions(conversation.options.sessions_dir))
    t = _talk(server.port, query, linger=2.0)
    assert [k for k, _ in t.messages] == [Kind.ERROR] and expected in t.errors[0]
    assert len(list_sessions(conversation.options.sessions_dir)) == before


def test_a_request_line_past_what_the_parser_reads_is_one_log_line(server, caplog):
    # Over PARSER_LINE_LIMIT aiohttp answers 400 itself; it logged that as a server error with a
    # traceback, which a client could print on the operator's console at will.
    from ppchat.net.server import PARSER_LINE_LIMIT

    caplog.set_level("INFO", logger="ppchat.net")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /api/chat?token=secret&text_prompt=" + b"x" * PARSER_LINE_LIMIT + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = s.recv(200)
    assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 ")
    [record] = [r for r in caplog.records if r.name.startswith(("ppchat.net.http", "aiohttp"))]
    assert record.getMessage() == ("127.0.0.1: request refused with HTTP 400 (LineTooLong: Got more than "
                                   f"{PARSER_LINE_LIMIT} bytes when reading)")
    assert record.exc_info is None and record.levelname == "INFO"
    t = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=5)  # the server goes on
    assert t.errors == [] and len(t.steps()) >= 5


def test_connections_that_never_send_a_request_are_capped_and_timed_out(conversation):
    # A client that opens connections and never finishes a request held each for aiohttp's default
    # (an hour in 3.14), and with enough of them took every file descriptor (256 by default on macOS):
    # no new client got in, and asyncio logged a traceback per failed accept.
    chat = ChatServer(conversation, ServeOptions(port=0, idle_timeout=2.0, max_connections=5))
    with ServerThread(chat) as thread:
        held = [socket.create_connection(("127.0.0.1", thread.port), timeout=15) for _ in range(5)]
        for s in held:
            s.sendall(b"GET /api/chat HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", thread.port), timeout=15) as extra:
            answer = extra.recv(400)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert answer.endswith(b"too many connections: this server holds at most 5 at once; "
                               b"try again later or another server (see /health)\n")
        for s in held:  # closed by the server once the idle timeout has passed
            assert s.recv(100) == b""
            s.close()
        t = _talk(thread.port, "", _speech(1.0), linger=10.0, until_steps=5)
        assert t.errors == [] and len(t.steps()) >= 5


def test_the_websocket_address_opened_as_a_page_says_what_it_is(server):
    # It was aiohttp's 'No WebSocket UPGRADE hdr: None\n Can "Upgrade" only to "WebSocket".'
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/chat", timeout=10)
    assert refused.value.code == 400
    assert refused.value.read().decode() == ("/api/chat is the PersonaPlex websocket: connect with a websocket client "
                                             "such as `ppchat talk --server ws://HOST:PORT`, or open / for the web UI\n")


def test_a_recording_that_cannot_start_does_not_end_the_conversation(server, conversation, monkeypatch, tmp_path,
                                                                    caplog):
    # As at the console, the conversation matters more than its recording. The server took the
    # recorder's error notice for the engine's: "the engine stopped: not recording: …", at once.
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(conversation.options, "sessions_dir", tmp_path / "file" / "sessions")
    caplog.set_level("WARNING", logger="ppchat.net")
    t = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=5)
    assert t.errors == [] and len(t.steps()) >= 5
    said = [r.getMessage() for r in caplog.records if r.name == "ppchat.net.server"]
    assert any(m.startswith("127.0.0.1:") and "not recording: cannot create a session folder" in m for m in said)


async def _leave_during_the_prompts(port: int, conditioning: threading.Event, text_prompt: str = "Hello") -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/api/chat?text_prompt={text_prompt}") as ws:
            assert await asyncio.get_running_loop().run_in_executor(None, conditioning.wait, 30)
            await ws.close()


def _hold_first_conditioning(monkeypatch, owner) -> tuple[threading.Event, list[str]]:
    """Patch `owner` (a conversation, or the class of a batch's rows) so that the first progress
    report of its conditioning sets the returned event and waits until `abandon_start` is called;
    the list then says whether that conditioning "went on" or was "given up"."""
    from ppchat.errors import ConditioningCancelled

    conditioning, requested, after = threading.Event(), threading.Event(), []
    publisher, abandon = owner._progress_publisher, owner.abandon_start

    def probe_publisher(*args, **kwargs):  # (self, interval_s) when patched on a class
        publish = publisher(*args, **kwargs)

        def probe(task: str, done: int, total: int) -> None:
            if not conditioning.is_set():
                conditioning.set()
                requested.wait(20)
            try:
                publish(task, done, total)
                after.append("went on")
            except ConditioningCancelled:
                after.append("given up")
                raise

        return probe

    def probe_abandon(*args) -> None:
        abandon(*args)
        requested.set()

    monkeypatch.setattr(owner, "_progress_publisher", probe_publisher)
    monkeypatch.setattr(owner, "abandon_start", probe_abandon)
    return conditioning, after


def test_a_client_that_leaves_during_the_prompts_leaves_no_session(server, conversation, monkeypatch):
    # Nothing was said: the prompts ran, no step did. Its session used to stay behind, empty, until
    # `ppchat sessions clean`. The prompts are slowed so that the client surely leaves during them.
    conditioning = threading.Event()
    condition = conversation._condition

    def slow_condition(sampling):
        conditioning.set()
        time.sleep(1.0)
        return condition(sampling)

    monkeypatch.setattr(conversation, "_condition", slow_condition)
    root = conversation.options.sessions_dir
    before = sorted(p.name for p in root.iterdir())
    asyncio.run(_leave_during_the_prompts(server.port, conditioning))
    _wait_idle(server)
    assert sorted(p.name for p in root.iterdir()) == before
    # The next client's conversation is recorded as usual, with its audio.
    t = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=5)
    assert t.errors == [] and len(t.steps()) >= 5
    assert _newest_session(server).frames >= 5 and len(list(root.iterdir())) == len(before) + 1


def test_the_prompts_of_a_client_that_left_are_given_up_not_run_to_the_end(server, conversation, monkeypatch):
    # A long voice conditions for tens of seconds: the server ran it to the end for nobody (and
    # served no one else meanwhile). Its first progress report waits until the server gives it up.
    conditioning, after = _hold_first_conditioning(monkeypatch, conversation)
    root = conversation.options.sessions_dir
    before = sorted(p.name for p in root.iterdir())
    asyncio.run(_leave_during_the_prompts(server.port, conditioning))
    _wait_idle(server)
    assert after == ["given up"]
    assert sorted(p.name for p in root.iterdir()) == before  # as before: no session for it


def test_every_voice_health_lists_is_accepted(server):
    # The demo's one voice, "none", was listed by /health (and so in `talk --server`'s voice picker)
    # but refused as voice_prompt: "'none.pt' is not in this server's voices folder".
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as response:
        voices = json.loads(response.read())["voices"]
    assert voices
    for name in voices:
        for sent in (name, f"{name}.pt"):  # ppchat's name, and the file name `talk --server` sends
            t = _talk(server.port, f"voice_prompt={sent}", _speech(0.5), linger=5.0, until_steps=2)
            assert t.errors == [] and t.messages[0][0] == Kind.HANDSHAKE
            _wait_idle(server)


def test_one_conversation_at_a_time_and_a_hundred_connections_at_once(server):
    refusals: list[Transcript] = []

    async def flood():
        await asyncio.sleep(1.0)  # once the first conversation is live
        results = await asyncio.gather(*(_converse(server.port, linger=3.0) for _ in range(100)),
                                       return_exceptions=True)
        refusals.extend(results)

    async def main():
        live = asyncio.create_task(_converse(server.port, "", _speech(5.0, seed=3), linger=10.0, until_steps=60))
        await flood()
        return await live

    first = asyncio.run(main())
    assert first.errors == []
    steps = first.steps()
    assert len(steps) >= 55 and [s["step"] for s in steps] == list(range(len(steps)))
    refused = [r for r in refusals if isinstance(r, Transcript)]
    assert len(refused) == 100, [r for r in refusals if not isinstance(r, Transcript)][:3]
    assert all(len(r.errors) == 1 and r.errors[0].startswith("busy") and "/health" in r.errors[0] for r in refused)


def test_health_says_busy_while_a_conversation_runs(server):
    def health():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = health()
    assert status == 200 and json.loads(body)["conversations"] == {"running": 0, "allowed": 1}
    seen = {}

    async def main():
        live = asyncio.create_task(_converse(server.port, "", _speech(2.0)))
        await asyncio.sleep(1.0)
        seen["during"] = await asyncio.get_running_loop().run_in_executor(None, health)
        await live

    asyncio.run(main())
    status, body = seen["during"]
    assert status == 503 and json.loads(body)["status"] == "busy"


def test_a_silent_client_is_timed_out(server, monkeypatch):
    monkeypatch.setattr(server.server.options, "idle_timeout", 2.0)
    t = _talk(server.port, "", None, linger=6.0)  # handshake, then nothing
    assert t.errors and "no message from the client for 2 s" in t.errors[0]


def test_bytes_sent_right_after_the_handshake_are_read(server):
    t = _talk(server.port, "", None, extra=[protocol.audio(b"not an Ogg stream, long enough to hold a page header")], linger=3.0)
    assert t.errors and "not a valid Ogg/Opus stream" in t.errors[0]


def _raw_websocket(port: int, rcvbuf: int = 2048) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return sock


def _masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_client_that_never_reads_is_dropped_and_the_server_goes_on(server, conversation):
    sock = _raw_websocket(server.port)
    encoder = OggOpusEncoder(packet_ms=20, packets_per_page=2)
    pcm = _speech(40.0, seed=5)
    t0 = time.monotonic()
    dropped_after = None
    try:
        for i in range(0, len(pcm), 480):  # keeps talking (so it is not idle), never reads a byte
            try:
                for page in encoder.encode(pcm[i:i + 480]):
                    sock.sendall(_masked_frame(protocol.audio(page)))
            except (BrokenPipeError, ConnectionResetError):
                dropped_after = time.monotonic() - t0
                break
            time.sleep(max(0.0, t0 + (i + 480) / 24000 - time.monotonic()))
            if i % 24000 == 0 and not server.server.running and i > 48000:
                dropped_after = time.monotonic() - t0
                break
    finally:
        sock.close()
    print(f"never-reading client dropped after {dropped_after} s")
    assert dropped_after is not None and dropped_after < 30, "the server kept a client that never reads"
    _wait_idle(server)
    notices = [n.message for _, n in _newest_session(server).notices]
    assert any("not reading" in m or "stopped reading" in m for m in notices), notices
    again = _talk(server.port, "", _speech(1.0), linger=10.0, until_steps=10)
    assert again.errors == [] and len(again.steps()) >= 5


def test_late_steps_keep_the_delay_bounded(server, conversation, monkeypatch):
    real = conversation.pipeline.process

    def slow(pcm):
        time.sleep(0.12)  # every step 120 ms: 1.5x slower than real time
        return real(pcm)

    monkeypatch.setattr(conversation.pipeline, "process", slow)
    monkeypatch.setattr(conversation.options, "max_backlog_frames", 3)
    t = _talk(server.port, "", _speech(4.0, seed=6), linger=1.0)
    steps = t.steps()
    assert t.errors == [] and steps
    assert sum(s.get("dropped_in", 0) for s in steps) > 0
    assert max(s["queue_in"] for s in steps) <= conversation.options.max_backlog_frames


def test_token_and_web_ui(conversation, tmp_path):
    static = tmp_path / "dist"
    (static / "assets").mkdir(parents=True)
    (static / "index.html").write_text("<html>web ui</html>")
    (static / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("do not serve")
    chat = ChatServer(conversation, ServeOptions(port=0, token="s3cret", static_dir=static, idle_timeout=2.0))
    with ServerThread(chat) as thread:
        base = f"http://127.0.0.1:{thread.port}"

        def get(path, headers=None):
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert get("/") == (200, b"<html>web ui</html>")
        assert get("/assets/app.js") == (200, b"console.log(1)")
        for path in ("/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt"):
            status, body = get(path)
            assert status in (403, 404) and b"do not serve" not in body, path
        status, body = get("/api/chat")
        assert status == 401 and b"token" in body
        assert get("/api/chat?token=wrong")[0] == 401
        ok = _talk(thread.port, "token=s3cret", _speech(1.0))
        assert ok.errors == [] and ok.steps()
        _wait_idle(thread)
        for scheme in ("Bearer", "bearer"):  # case-insensitive, as HTTP says (lower case was refused)
            ok = _talk(thread.port, "", _speech(1.0), headers={"Authorization": f"{scheme} s3cret"})
            assert ok.errors == [] and ok.steps()
            _wait_idle(thread)


def test_a_served_conversation_is_visible_to_ppchat_monitor(conversation, tmp_path):
    import threading

    from ppchat.engine import monitor_socket
    from ppchat.engine.events import StepEvent

    sock_path = tmp_path / "monitor.sock"
    options = TalkOptions(model="demo", record=False, monitor=True, monitor_socket=sock_path)
    with Conversation(options, model=conversation.model) as conv:
        with ServerThread(ChatServer(conv, ServeOptions(port=0, idle_timeout=60))) as thread:
            seen: list = []
            sock = monitor_socket.connect(sock_path)

            def read():
                for message in monitor_socket.read_messages(sock):
                    seen.append(message)

            threading.Thread(target=read, daemon=True).start()
            t = _talk(thread.port, "", _speech(1.5), linger=10.0, until_steps=15)
            sock.close()
    assert t.errors == []
    steps = [m for m in seen if isinstance(m, StepEvent)]
    assert len(steps) >= 10 and isinstance(seen[0], dict) and seen[0].get("type") == "info"
