"""`ppchat serve --max-conversations N` on loopback with the demo model: N websocket clients at once in
one batched step, each with its own audio, text, session and step numbering; joins and leaves while
others talk; a client beyond N; a served row equals the same conversation run alone."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import urllib.request

import aiohttp
import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("sphn")

from ppchat.conversation import TalkOptions
from ppchat.models.loader import load_model
from ppchat.net import protocol
from ppchat.net.protocol import Kind
from ppchat.net.server import SHUTTING_DOWN, ChatServer, ServeOptions, ServerThread
from ppchat.sampling import Sampling
from ppchat.served import ServedBatch
from ppchat.sessions.store import list_sessions, load_session
from tests.test_net_server import (
    WEB_UI_QUERY,
    Transcript,
    _converse,
    _hold_first_conditioning,
    _leave_during_the_prompts,
    _speech,
)

CAPACITY = 3
SETTLE = 30.0  # seconds for a conversation to stop and be saved on a loaded 2-core machine


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)


@pytest.fixture
def host(model, tmp_path):
    # No dropping (the demo's batched steps are near real time on a shared 2-core machine, and the
    # exactness checks want every frame stepped); test_late_frames sets its own.
    options = TalkOptions(model="demo", sessions_dir=tmp_path / "sessions", monitor=False, sampling=Sampling(seed=1),
                          max_backlog_frames=10_000)
    with ServedBatch(options, CAPACITY, model=model) as served:
        yield served


@pytest.fixture
def server(host):
    chat = ChatServer(host, ServeOptions(port=0, idle_timeout=60.0, send_timeout=2.0, max_conversations=CAPACITY))
    with ServerThread(chat) as thread:
        yield thread


def _until(ready, timeout: float = SETTLE) -> bool:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _sessions(thread: ServerThread, count: int):
    """The `count` recorded sessions once all connections have finished (stopped and saved)."""
    assert _until(lambda: thread.server.running == 0 and thread.server.conversation.batch.lanes == 0)
    root = thread.server.conversation.options.sessions_dir
    assert _until(lambda: len(list_sessions(root)) >= count)
    return [load_session(s.path) for s in list_sessions(root)]


def _health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _client_of(t: Transcript) -> dict:
    return next(m for m in (json.loads(p) for p in t.of(Kind.METADATA)) if m.get("type") == "info")


def _check_own_conversation(t: Transcript, min_steps: int) -> None:
    assert t.errors == []
    assert [k for k, _ in t.messages][0] == Kind.HANDSHAKE
    steps = t.steps()
    assert len(steps) >= min_steps and [s["step"] for s in steps] == list(range(len(steps)))
    # A step's text leaves before its record: a client that closes between the two has the text alone.
    last_record = max(i for i, (kind, _) in enumerate(t.messages) if kind == Kind.METADATA)
    texts = [p.decode() for kind, p in t.messages[:last_record] if kind == Kind.TEXT]
    assert texts == [s["piece"] for s in steps if s.get("piece")]
    assert len(t.of(Kind.AUDIO)) >= min_steps


def test_n_clients_at_once_each_get_their_own_conversation_and_session(server, tmp_path_factory):
    prompts = ["You are a pirate.", "You sell insurance.", "You teach chemistry."]

    async def main():
        return await asyncio.gather(*(
            _converse(server.port, f"text_prompt={p.replace(' ', '+')}&seed={40 + i}", _speech(3.0, seed=i),
                      linger=30.0, until_steps=36)
            for i, p in enumerate(prompts)))

    talks = asyncio.run(main())
    for t in talks:
        _check_own_conversation(t, 30)
    # One batch: the three conversations' steps ran together (the same frames' timings).
    assert len({s["ms"]["total"] for t in talks for s in t.steps()}) < sum(len(t.steps()) for t in talks)

    sessions = {s.info.meta.role_prompt: s for s in _sessions(server, 3)}
    assert sorted(sessions) == sorted(prompts)
    clients = {s.info.meta.client for s in sessions.values()}
    assert len(clients) == 3 and all(c.startswith("127.0.0.1:") for c in clients)
    for i, (prompt, t) in enumerate(zip(prompts, talks)):
        session = sessions[prompt]
        assert session.info.meta.kind == "served" and session.info.meta.sampling["seed"] == 40 + i
        info = _client_of(t)
        assert info["prompt"] == prompt and info["max_conversations"] == CAPACITY and "note" not in info
        # Its own step log: the text the client got is the text its session recorded.
        recorded = [e.text_piece for e in session.steps if e.text_piece]
        got = [p.decode() for p in t.of(Kind.TEXT)]
        assert recorded[:len(got)] == got

    # A row equals the same conversation run alone: the recorded user track (what the model heard,
    # silence where the client was behind) through a one-conversation pipeline with the same seed
    # and prompt gives the same text tokens (a row drawing with another's key, reading another's
    # cache or hearing another's audio would diverge at once: the three differ in all of these).
    from ppchat.engine.pipeline import ModelPipeline

    alone = load_model("demo", cache_root=tmp_path_factory.mktemp("alone"), depformer_steps=8, show_progress=False)
    for i, prompt in enumerate(prompts):
        session = sessions[prompt]
        single = ModelPipeline(alone, Sampling(seed=40 + i), phase_timing=False)
        single.start(None, prompt)
        stepped = [e for e in session.steps if e.filled not in ("agent", "both")]  # not dropped: the model heard them
        assert len(stepped) >= 30
        tokens = [single.run_frame(session.frame_audio(e.step)[0])[1] for e in stepped]
        assert tokens == [e.text_token for e in stepped], prompt


def test_a_client_joins_and_one_leaves_while_others_talk(server):
    seen: dict[str, tuple[int, dict]] = {}

    async def later(delay: float, seconds: float, seed: int) -> Transcript:
        await asyncio.sleep(delay)
        return await _converse(server.port, f"seed={seed}", _speech(seconds, seed=seed), linger=0.3)

    async def main():
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(_converse(server.port, "seed=7", _speech(6.0, seed=7), linger=30.0, until_steps=70))
        second = asyncio.create_task(later(1.0, 1.5, 8))
        await asyncio.sleep(2.0)
        seen["two"] = await loop.run_in_executor(None, _health, server.port)
        leaver = await second
        third = asyncio.create_task(later(0.5, 1.5, 9))  # takes the row the second one left
        return await first, leaver, await third

    first, leaver, third = asyncio.run(main())
    _check_own_conversation(first, 70)
    _check_own_conversation(leaver, 8)
    _check_own_conversation(third, 8)
    assert seen["two"][1]["conversations"] == {"running": 2, "allowed": CAPACITY}
    # The first conversation never stopped for the others: one step per frame it sent, and no pause
    # longer than a join's prompts take on this machine.
    walls = [s["wall"] for s in first.steps()]
    assert max(np.diff(walls)) < 2.0
    sessions = _sessions(server, 3)
    assert sorted(s.info.meta.sampling["seed"] for s in sessions) == [7, 8, 9]
    assert all(s.info.status == "complete" and not s.warnings for s in sessions)


def test_a_client_beyond_the_limit_gets_the_documented_answer(server):
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()
        live = [asyncio.create_task(_converse(server.port, f"seed={i}", _speech(3.0, seed=i), linger=20.0, until_steps=36))
                for i in range(CAPACITY)]
        await asyncio.sleep(1.5)
        seen["full"] = await loop.run_in_executor(None, _health, server.port)
        seen["refused"] = await _converse(server.port, "", linger=2.0)
        return await asyncio.gather(*live)

    assert _health(server.port) == (200, _health(server.port)[1])
    talks = asyncio.run(main())
    for t in talks:
        _check_own_conversation(t, 30)
    status, body = seen["full"]
    assert status == 503 and body["status"] == "busy" and body["conversations"] == {"running": CAPACITY, "allowed": CAPACITY}
    refused = seen["refused"]
    assert [k for k, _ in refused.messages] == [Kind.ERROR]
    assert refused.errors[0].startswith(f"busy: this server runs {CAPACITY} conversation(s) at a time") and "/health" in refused.errors[0]
    _sessions(server, CAPACITY)
    status, body = _health(server.port)
    assert status == 200 and body["conversations"] == {"running": 0, "allowed": CAPACITY}


def test_a_prompt_at_its_limit_in_any_script_is_served_and_one_over_is_named(server):
    from urllib.parse import quote

    from ppchat.engine.prompts import MAX_PROMPT_CHARS

    # 1000 characters of Japanese are ~9 KB once percent-encoded: over aiohttp's default request
    # line (8190 bytes), which refused them with a bare HTTP 400 before the query was read.
    prompt = ("日本語で話してください。" * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]
    assert len(f"/api/chat?text_prompt={quote(prompt)}") > 8190

    async def main():
        return await asyncio.gather(
            _converse(server.port, f"text_prompt={quote(prompt)}", _speech(1.0), linger=20.0, until_steps=5),
            _converse(server.port, f"text_prompt={quote(prompt + '。')}", linger=2.0))

    served, over = asyncio.run(main())
    _check_own_conversation(served, 5)
    assert _client_of(served)["prompt"] == prompt
    assert over.errors == [f"text_prompt has {MAX_PROMPT_CHARS + 1} characters; the limit is {MAX_PROMPT_CHARS}"]


def test_a_client_reconnecting_at_once_gets_the_slot_its_last_conversation_frees(server, monkeypatch):
    from ppchat.served import ServedRow

    # Its old conversation is still being stopped and saved when it comes back (a new voice in
    # `ppchat talk --server`, the web UI's next try): it used to be told "busy" for that moment.
    # The save is slowed so that the reconnect surely lands inside it.
    close = ServedRow.close

    def slow_close(self):
        time.sleep(1.5)
        close(self)

    monkeypatch.setattr(ServedRow, "close", slow_close)

    async def main():
        others = [asyncio.create_task(_converse(server.port, f"seed={i}", _speech(6.0, seed=i), linger=1.0))
                  for i in range(CAPACITY - 1)]
        first = await _converse(server.port, "seed=9", _speech(1.0), linger=10.0, until_steps=5)
        for _ in range(100):  # its handler has seen the close and is saving it
            if server.server.leaving:
                break
            await asyncio.sleep(0.01)
        assert server.server.running == CAPACITY and server.server.leaving == 1
        again = await _converse(server.port, "seed=9", _speech(1.0), linger=10.0, until_steps=5)
        return first, again, await asyncio.gather(*others)

    first, again, others = asyncio.run(main())
    for t in (first, again, *others):
        _check_own_conversation(t, 5)
    _sessions(server, CAPACITY + 1)


def test_a_client_that_leaves_during_the_prompts_leaves_no_session_while_others_are_recorded(server, monkeypatch):
    from ppchat.served import ServedRow

    # As with one conversation (test_net_server): no step ran for it, so nothing is kept; the prompts
    # are slowed so that it surely leaves during them, while another client talks on.
    conditioning = threading.Event()
    condition = ServedRow._condition

    def slow_condition(self, sampling):
        if "Leaving" in self.prompt_text:
            conditioning.set()
            time.sleep(1.0)
        return condition(self, sampling)

    monkeypatch.setattr(ServedRow, "_condition", slow_condition)

    async def main():
        talking = asyncio.create_task(_converse(server.port, "seed=3", _speech(3.0, seed=3), linger=10.0,
                                                until_steps=20))
        await _leave_during_the_prompts(server.port, conditioning, "Leaving")
        return await talking

    talked = asyncio.run(main())
    _check_own_conversation(talked, 20)
    [session] = _sessions(server, 1)
    assert session.frames >= 20 and session.info.meta.role_prompt != "Leaving"
    root = server.server.conversation.options.sessions_dir
    assert [p.name for p in root.iterdir()] == [session.name]


def test_the_prompts_of_a_batched_client_that_left_are_given_up_freeing_the_step_thread(server, monkeypatch):
    # A batch conditions on its one step thread, so nobody's frames ran while a long voice
    # conditioned, even for a client that had left. Its first progress report waits until the
    # server gives it up.
    from ppchat.served import ServedRow

    conditioning, after = _hold_first_conditioning(monkeypatch, ServedRow)
    asyncio.run(_leave_during_the_prompts(server.port, conditioning, "Leaving"))
    assert _until(lambda: server.server.running == 0)
    assert after == ["given up"]
    # The step thread is free: the next client talks as usual, and only it is recorded.
    _check_own_conversation(asyncio.run(_converse(server.port, "seed=3", _speech(1.5, seed=3), linger=10.0,
                                                  until_steps=10)), 10)
    [session] = _sessions(server, 1)
    assert session.info.meta.role_prompt != "Leaving"


def test_a_recording_that_cannot_start_does_not_end_a_batched_conversation(server, host, monkeypatch, tmp_path):
    # As with one conversation (test_net_server): it was ended with "the engine stopped: not recording: …".
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(host.options, "sessions_dir", tmp_path / "file" / "sessions")
    t = asyncio.run(_converse(server.port, "seed=1", _speech(2.0), linger=10.0, until_steps=10))
    _check_own_conversation(t, 10)


def test_sampling_a_client_asks_for_runs_at_the_batchs_values_and_says_so(server, host):
    t = asyncio.run(_converse(server.port, WEB_UI_QUERY, _speech(1.5), linger=10.0, until_steps=15))
    _check_own_conversation(t, 15)
    info = _client_of(t)
    batch = host.options.sampling
    applied = {"text_temp": batch.text.temp, "text_top_k": batch.text.top_k, "audio_temp": batch.audio.temp,
               "audio_top_k": batch.audio.top_k, "seed": 123}  # the web UI's seed is honoured
    assert info["sampling"] == applied
    for asked in ("text_temperature=0.5", "text_topk=20", "audio_temperature=0.6", "audio_topk=100"):
        assert asked in info["note"]
    (session,) = _sessions(server, 1)
    assert session.info.meta.sampling == applied
    assert any(n.level == "warning" and n.message == info["note"] for _, n in session.notices)


def test_late_frames_keep_every_delay_bounded(server, host, monkeypatch):
    real = host.batch.pipeline.run_frame

    def slow(pcm):
        time.sleep(0.12)  # every batched frame 120 ms: 1.5x slower than real time
        return real(pcm)

    monkeypatch.setattr(host.batch.pipeline, "run_frame", slow)
    monkeypatch.setattr(host.options, "max_backlog_frames", 3)

    async def main():
        return await asyncio.gather(*(_converse(server.port, f"seed={i}", _speech(4.0, seed=i), linger=1.0)
                                      for i in range(2)))

    for t in asyncio.run(main()):
        steps = t.steps()
        assert t.errors == [] and steps
        assert sum(s.get("dropped_in", 0) for s in steps) > 0
        assert max(s["queue_in"] for s in steps) <= 3
        assert all(s["late"] for s in steps if s.get("filled") not in ("agent", "both"))
    _sessions(server, 2)


def test_a_failing_batched_frame_ends_every_conversation_and_the_server_goes_on(server, host, monkeypatch):
    real = host.batch.pipeline.run_frame
    calls = {"n": 0}

    def failing(pcm):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("out of memory (a test)")
        return real(pcm)

    monkeypatch.setattr(host.batch.pipeline, "run_frame", failing)

    async def main():
        return await asyncio.gather(*(_converse(server.port, f"seed={i}", _speech(4.0, seed=i), linger=5.0)
                                      for i in range(2)))

    for t in asyncio.run(main()):
        assert len(t.errors) == 1 and "the batched step failed: RuntimeError: out of memory (a test)" in t.errors[0]
    sessions = _sessions(server, 2)
    assert all(s.frames >= 10 for s in sessions)
    again = asyncio.run(_converse(server.port, "", _speech(1.0), linger=10.0, until_steps=10))
    _check_own_conversation(again, 10)


def test_stopping_the_server_saves_every_live_conversation_and_tells_each_client(host):
    chat = ChatServer(host, ServeOptions(port=0, idle_timeout=60.0, max_conversations=CAPACITY))
    thread = ServerThread(chat).start()

    async def main():
        talks = [asyncio.create_task(_converse(thread.port, f"seed={i}", _speech(10.0, seed=i), linger=1.0))
                 for i in range(2)]
        await asyncio.sleep(2.5)
        await asyncio.get_running_loop().run_in_executor(None, thread.stop)  # as Ctrl-C does
        return await asyncio.gather(*talks, return_exceptions=True)

    talks = asyncio.run(main())
    # Each client is told why its connection ends (before: a bare drop, 1006, like a network fault).
    for t in talks:
        assert isinstance(t, Transcript), t
        assert t.errors == [SHUTTING_DOWN] and t.close_code == 1000
    assert host.batch.lanes == 0
    sessions = [load_session(s.path) for s in list_sessions(host.options.sessions_dir)]
    assert len(sessions) == 2 and all(s.frames >= 10 and not s.warnings for s in sessions)


def test_each_served_conversation_is_visible_to_ppchat_monitor(model, tmp_path, monkeypatch):
    import threading

    from ppchat.engine import monitor_socket
    from ppchat.engine.events import StepEvent

    monkeypatch.setattr("ppchat.served.runtime_dir", lambda: tmp_path)
    options = TalkOptions(model="demo", record=False, monitor=True)
    seen: dict[str, list] = {}
    with ServedBatch(options, 2, model=model) as served:
        with ServerThread(ChatServer(served, ServeOptions(port=0, idle_timeout=60, max_conversations=2))) as thread:
            async def main():
                talks = [asyncio.create_task(_converse(thread.port, f"seed={i}", _speech(3.0, seed=i), linger=10.0,
                                                       until_steps=30)) for i in range(2)]
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, lambda: _until(lambda: len(list(tmp_path.glob("monitor-*.sock"))) == 2))
                for path in tmp_path.glob("monitor-*.sock"):
                    sock = monitor_socket.connect(path)
                    seen[path.name] = []
                    threading.Thread(target=lambda s=sock, n=path.name: seen[n].extend(monitor_socket.read_messages(s)),
                                     daemon=True).start()
                return await asyncio.gather(*talks)

            talks = asyncio.run(main())
    assert all(t.errors == [] for t in talks)
    assert len(seen) == 2
    for messages in seen.values():
        steps = [m for m in messages if isinstance(m, StepEvent)]
        # Each socket carries one conversation: its own step numbers, once each.
        assert len(steps) >= 10 and [s.step for s in steps] == list(range(steps[0].step, steps[0].step + len(steps)))
    assert not list(tmp_path.glob("monitor-*.sock"))  # removed as each conversation ended


def test_the_ppchat_console_as_a_client_is_told_what_the_batch_does_not_apply(server, host, tmp_path):
    from ppchat.engine.events import NoticeEvent, StepEvent
    from ppchat.engine.virtual_io import ArrayAudio
    from ppchat.net.remote import RemoteConversation
    from ppchat.sampling import SamplingParams

    sampling = Sampling(text=SamplingParams(0.5, host.options.sampling.text.top_k), seed=3)
    options = TalkOptions(sessions_dir=tmp_path, monitor=False, sampling=sampling)
    with RemoteConversation(f"ws://127.0.0.1:{server.port}", options,
                            audio_factory=lambda: ArrayAudio(_speech(2.0), 24000)) as conv:
        sub = conv.bus.subscribe(maxlen=10_000)
        conv.start()
        assert _until(lambda: not conv.running, 20.0)
        conv.stop()
        events = sub.drain()
    warnings = [e.message for e in events if isinstance(e, NoticeEvent) and e.level == "warning"]
    assert [w for w in warnings if w.startswith("the server says: sampling text_temperature=0.5 not applied")]
    assert sum(isinstance(e, StepEvent) for e in events) >= 20
    _sessions(server, 1)


def test_a_task_that_fails_as_its_connection_ends_is_not_reported_as_never_retrieved(server, monkeypatch):
    # Seen with a client sending a text frame: the reader ends the connection, and the writer,
    # cancelled inside a send, fails with ConnectionResetError ('Cannot write to closing transport');
    # nobody read that exception, so asyncio printed "Task exception was never retrieved" and a
    # traceback on the operator's console for every such client.
    async def write_until_cancelled(self, *args):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("Cannot write to closing transport") from None

    monkeypatch.setattr(ChatServer, "_write", write_until_cancelled)
    reported = []
    server._loop.call_soon_threadsafe(server._loop.set_exception_handler, lambda loop, context: reported.append(context))

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{server.port}/api/chat") as ws:
                assert (await ws.receive(timeout=30)).data == protocol.handshake()
                await ws.send_str("hello")
                return [m.data async for m in ws]

    got = asyncio.run(main())
    assert got == [protocol.error("text frames are not part of the protocol; send binary messages")]
    assert _until(lambda: server.server.running == 0)
    gc.collect()  # asyncio reports an unretrieved exception when the task is freed
    time.sleep(0.2)  # the handler runs on the server's loop
    assert [c.get("message") for c in reported] == []
