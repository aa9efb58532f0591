"""`ppchat talk --server`: the console's conversation with the model on a server, on loopback."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("sphn")

from aiohttp import web  # noqa: E402

from ppchat.conversation import Conversation, TalkOptions  # noqa: E402
from ppchat.engine.events import NoticeEvent, StepEvent  # noqa: E402
from ppchat.engine.virtual_io import ArrayAudio  # noqa: E402
from ppchat.errors import PPChatError  # noqa: E402
from ppchat.models.loader import load_model  # noqa: E402
from ppchat.net import protocol  # noqa: E402
from ppchat.net.client import ChatClient, chat_url  # noqa: E402
from ppchat.net.jitter import JitterBuffer  # noqa: E402
from ppchat.net.opus import OggOpusDecoder, OggOpusEncoder  # noqa: E402
from ppchat.net.params import ChatParams  # noqa: E402
from ppchat.net.remote import RemoteConversation  # noqa: E402
from ppchat.net.server import ChatServer, ServeOptions, ServerThread  # noqa: E402
from ppchat.sampling import AUDIO_DEFAULTS, Sampling, SamplingParams  # noqa: E402
from ppchat.sessions.store import list_sessions, load_session  # noqa: E402


def test_server_addresses():
    assert chat_url("ws://gpu:8998") == "ws://gpu:8998/api/chat"
    assert chat_url("wss://gpu.example/") == "wss://gpu.example/api/chat"
    assert chat_url("ws://127.0.0.1:9000/custom/chat") == "ws://127.0.0.1:9000/custom/chat"
    for bad in ("http://gpu:8998", "gpu:8998", "ws://", ""):
        with pytest.raises(PPChatError, match="not a websocket address"):
            chat_url(bad)


def test_the_jitter_buffer_waits_for_a_frame_then_counts_underruns():
    buf = JitterBuffer(4, 1000, max_ms=40, settle_s=1000)
    out = np.zeros(4, dtype=np.float32)
    assert buf.read(out) and not out.any()  # nothing has ever arrived: silence, not an underrun
    threading.Timer(0.05, buf.write, args=(np.arange(1, 5, dtype=np.float32),)).start()
    assert buf.read(out, wait=5.0)  # returns as soon as the frame is there
    assert out.tolist() == [1, 2, 3, 4]
    buf.write(np.array([5, 6], dtype=np.float32))
    assert not buf.read(out, wait=0.01)
    assert out.tolist() == [5, 6, 0, 0] and buf.underruns == 1


def test_the_jitter_buffer_is_bounded_and_settles_back():
    buf = JitterBuffer(4, 1000, max_ms=20, settle_s=0.012)  # 20 samples at most; settle over 3 reads
    out = np.zeros(4, dtype=np.float32)
    buf.write(np.arange(100, dtype=np.float32))  # a burst after a stall
    assert buf.read(out)
    assert out.tolist() == [96, 97, 98, 99] and buf.skipped_samples == 96  # the newest frame; the rest is too late
    buf.write(np.arange(12, dtype=np.float32))
    levels = []
    for _ in range(3):
        buf.read(out)
        levels.append(buf.buffered_ms)
    assert levels == [8.0, 4.0, 0.0] and buf.underruns == 0
    buf.write(np.arange(40, dtype=np.float32)[:20])  # a steady surplus of 12 samples (3 frames' worth)...
    for _ in range(3):
        buf.write(np.zeros(4, dtype=np.float32))
        buf.read(out)
    assert buf.buffered_ms < 20 and buf.skipped_samples > 96  # ...is trimmed back once it has lasted


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)
    options = TalkOptions(model="demo", sessions_dir=tmp_path_factory.mktemp("served"), monitor=False,
                          max_backlog_frames=10_000)
    with Conversation(options, model=model) as conv:
        with ServerThread(ChatServer(conv, ServeOptions(port=0, idle_timeout=60))) as thread:
            yield thread


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.25 * np.sin(2 * np.pi * (200 + 50 * np.sin(3 * t)) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _wait_idle(thread: ServerThread, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while thread.server.running or thread.server.conversation.running:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _sessions(folder):
    return sorted((load_session(s.path) for s in list_sessions(folder)), key=lambda s: s.info.started)


def _run(conv: RemoteConversation, seconds: float, **start) -> list[StepEvent]:
    sub = conv.bus.subscribe(maxlen=100_000, name="test")
    conv.start(**start)
    deadline = time.monotonic() + seconds
    while conv.running and time.monotonic() < deadline:
        time.sleep(0.05)
    conv.stop()
    events = sub.drain()
    sub.close()
    errors = [e.message for e in events if isinstance(e, NoticeEvent) and e.level == "error"]
    assert not errors
    return [e for e in events if isinstance(e, StepEvent)]


def test_ppchat_client_and_ppchat_serve(server, tmp_path):
    _wait_idle(server)
    pcm = _speech(6.0)
    endpoints = []

    def audio():
        endpoints.append(ArrayAudio(pcm, 24000, realtime=True))
        return endpoints[-1]

    # Every microphone frame sent (no late-frame dropping on a busy machine): the exactness checks need them all.
    sampling = Sampling(audio=SamplingParams(AUDIO_DEFAULTS.temp, 50), seed=9)
    options = TalkOptions(sessions_dir=tmp_path, monitor=False, prompt="casual", sampling=sampling,
                          max_backlog_frames=10_000)
    with RemoteConversation(f"ws://127.0.0.1:{server.port}", options, audio_factory=audio) as conv:
        assert conv.voices()[:2] == ["default", "none"]  # from the server's /health
        steps = _run(conv, 4.0)
        assert conv.info["model"].startswith("demo @ 127.0.0.1:")
        _wait_idle(server)
        # A new prompt reconnects: the server records a second conversation with it.
        again = _run(conv, 2.0, prompt="assistant")
    _wait_idle(server)

    assert len(steps) >= 40 and [e.step for e in steps] == list(range(len(steps)))
    remote = [e for e in steps if "encode" in e.timings_ms]
    assert len(remote) >= 30 and all(e.timings_ms["total"] > 0 and "rtt" in e.timings_ms for e in remote)
    assert any(e.text_piece for e in steps) and again
    mine, served = _sessions(tmp_path), _sessions(server.server.conversation.options.sessions_dir)[-2:]
    assert [s.info.meta.kind for s in mine] == ["remote", "remote"]
    assert [s.info.meta.kind for s in served] == ["served", "served"]
    assert mine[0].info.meta.server == f"ws://127.0.0.1:{server.port}/api/chat"
    assert served[0].info.meta.client.startswith("127.0.0.1:")
    assert [s.info.meta.role_prompt for s in served] == [s.info.meta.role_prompt for s in mine]
    assert served[0].info.meta.role_prompt != served[1].info.meta.role_prompt
    assert served[0].info.meta.sampling["seed"] == 9 and served[0].info.meta.sampling["audio_top_k"] == 50
    # user.wav as sent: exactly the microphone; the server heard its Opus coding of it.
    first = mine[0]
    n = first.frames * 1920
    np.testing.assert_array_equal(first.user_audio[:n], pcm[:n])
    sent = OggOpusEncoder(packet_ms=80, packets_per_page=1)
    decoder = OggOpusDecoder()
    heard = np.concatenate([decoder.decode(p) for i in range(0, n, 1920) for p in sent.encode(pcm[i:i + 1920])])
    m = min(served[0].frames, first.frames - 1) * 1920
    np.testing.assert_array_equal(served[0].user_audio[:m], heard[:m])
    # agent.wav as played: the server's agent track through its Opus coding, a whole run of frames
    # of it sample for sample (at the offset the network and the wait put it).
    coder, decoder = OggOpusEncoder(packet_ms=80, packets_per_page=1), OggOpusDecoder()
    frames = [served[0].agent_audio[s.step * 1920:(s.step + 1) * 1920] for s in served[0].steps]
    received = np.concatenate([decoder.decode(p) for f in frames for p in coder.encode(f)])
    agent = np.asarray(first.agent_audio)

    def played(k: int) -> bool:  # frames k, k+1 of what was received appear, sample for sample, in agent.wav
        run = received[k * 1920:(k + 2) * 1920]
        return bool(np.abs(run).max() > 0) and any(np.array_equal(agent[i:i + len(run)], run)
                                                   for i in np.flatnonzero(agent == run[0]))

    # Underruns on a busy machine cut the stream where they fall; between them it is the server's.
    matched = sum(played(k) for k in range(5, len(received) // 1920 - 2, 2))
    assert matched >= 5, "the played audio is not the server's"
    server_text = "".join(e.text_piece or "" for e in served[0].steps if e.text_token not in (0, 3))
    client_text = "".join(e.text_piece or "" for e in first.steps)
    assert client_text and server_text.startswith(client_text)


def test_a_refusal_is_the_servers_message(server, tmp_path):
    _wait_idle(server)
    options = TalkOptions(sessions_dir=tmp_path, monitor=False, voice="NATF2")
    with RemoteConversation(f"ws://127.0.0.1:{server.port}", options,
                            audio_factory=lambda: ArrayAudio(_speech(1.0), 24000)) as conv:
        with pytest.raises(PPChatError, match="voice_prompt 'NATF2.pt' is not in this server's voices folder"):
            conv.start()
    assert list_sessions(tmp_path) == []


@pytest.mark.parametrize("prompt,expected", [
    # Past the line a valid query needs, but within what the server reads: its own sentence (0x05).
    ("x" * 30_000, "text_prompt has 30000 characters; the limit is 1000"),
    # Past what the server reads at all: the HTTP answer, in words, with the length and the fix.
    ("x" * 70_000, r"HTTP 400 Bad Request: the request line is 70022 bytes .* shorten the role prompt"),
])
def test_a_request_line_too_long_is_refused_in_words(server, prompt, expected):
    # It used to be "the server refused the connection: HTTP 400 Invalid response status".
    _wait_idle(server)
    client = ChatClient(f"ws://127.0.0.1:{server.port}", ChatParams(text_prompt=prompt), connect_timeout=10)
    with pytest.raises(PPChatError, match=expected):
        client.connect()


def test_a_server_with_too_many_connections_is_named(server):
    import socket

    full = ChatServer(server.server.conversation, ServeOptions(port=0, max_connections=1))
    with ServerThread(full) as thread, socket.create_connection(("127.0.0.1", thread.port)) as held:
        held.sendall(b"GET /health HTTP/1.1\r\n")  # the one connection it holds, never finished
        time.sleep(0.3)
        client = ChatClient(f"ws://127.0.0.1:{thread.port}", ChatParams(), connect_timeout=10)
        with pytest.raises(PPChatError, match="HTTP 503 Service Unavailable: it has too many connections open; "
                                              "try again later"):
            client.connect()


def test_an_unreachable_server_is_named(tmp_path):
    with pytest.raises(PPChatError, match=r"cannot reach ws://127.0.0.1:9/api/chat"):
        RemoteConversation("ws://127.0.0.1:9", TalkOptions(sessions_dir=tmp_path, monitor=False))


class _ReferenceLike:
    """A stand-in for NVIDIA's server: no /health, no 0x04; the handshake, then the user's own audio
    back one frame per page (sphn's layout) and a text piece per frame. Enough to show the console
    needs nothing ppchat-specific."""

    def __init__(self):
        self.queries = []
        self.port = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/api/chat", self.chat)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    async def chat(self, request):
        self.queries.append(dict(request.query))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"\x00")
        decoder, encoder, pending = OggOpusDecoder(), OggOpusEncoder(packet_ms=40), np.zeros(0, np.float32)
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY or msg.data[:1] != b"\x01":
                continue
            pending = np.concatenate([pending, decoder.decode(msg.data[1:])])
            while len(pending) >= 1920:
                frame, pending = pending[:1920], pending[1920:]
                for page in encoder.encode(frame):
                    await ws.send_bytes(protocol.audio(page))
                await ws.send_bytes(protocol.text(" la"))
        return ws


def test_the_console_is_a_client_of_a_reference_like_server(tmp_path):
    ref = _ReferenceLike()
    options = TalkOptions(sessions_dir=tmp_path, monitor=False, voice="NATM1", prompt="casual")
    with RemoteConversation(f"ws://127.0.0.1:{ref.port}", options,
                            audio_factory=lambda: ArrayAudio(_speech(3.0), 24000)) as conv:
        steps = _run(conv, 3.5)
    assert ref.queries[0]["voice_prompt"] == "NATM1.pt" and ref.queries[0]["text_prompt"].startswith("You enjoy")
    assert len(steps) >= 30 and "".join(e.text_piece or "" for e in steps).count(" la") >= 20
    assert all(e.text_token is None for e in steps)
    [session] = _sessions(tmp_path)
    assert session.info.meta.kind == "remote" and session.info.meta.model_id == "?"
    # Text without token ids is recorded and read back (the reference sends pieces only).
    assert "".join(e.text_piece or "" for e in session.steps).count(" la") >= 20
    # The agent's audio is the echo of the user's: it arrived and was played.
    assert np.abs(session.agent_audio).max() > 0.05


def test_a_prompt_longer_than_nvidias_server_reads_is_named(tmp_path):
    # 1000 characters of Japanese, within ppchat's limit, are ~9 KB percent-encoded: over the 8190
    # bytes of aiohttp's default request line, which NVIDIA's server keeps (as _ReferenceLike does).
    ref = _ReferenceLike()
    prompt = ("日本語で話してください。" * 100)[:1000]
    options = TalkOptions(sessions_dir=tmp_path, monitor=False, prompt=prompt)
    with pytest.raises(PPChatError, match=r"HTTP 400 Bad Request: the request line is 9\d{3} bytes .*shorten the role prompt"):
        RemoteConversation(f"ws://127.0.0.1:{ref.port}", options,
                           audio_factory=lambda: ArrayAudio(_speech(1.0), 24000)).start()
    assert ref.queries == []


def test_the_latency_panel_shows_the_network_for_a_remote_model():
    from ppchat.tui.widgets.latency import LatencyPanel

    panel = LatencyPanel()
    local = StepEvent(step=0, audio_time=0.0, wall_time=0.0, timings_ms={"total": 40.0, "encode": 10.0})
    panel.add(local)
    text = ["".join(t for t, _ in line) for line in panel.render_runs(50, 20)]
    assert not any(line.startswith("rtt") for line in text)
    panel.add(StepEvent(step=1, audio_time=0.08, wall_time=0.0,
                        timings_ms={"total": 40.0, "encode": 10.0, "rtt": 47.25, "jitter": 3.5, "buffer": 80.0}))
    text = ["".join(t for t, _ in line) for line in panel.render_runs(50, 20)]
    assert "rtt 47.2 jitter 3.5 buf 80" in text and len(text) == 20
