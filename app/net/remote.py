"""`ppchat talk --server`: the console's conversation, with the model on a PersonaPlex server.

`RemoteConversation` is the local `Conversation` (microphone, speaker, step thread, recorder,
monitor socket, captions) with the model side replaced: conditioning is connecting with the
voice and prompt as query parameters (so a change reconnects), and the step thread steps a
`RemoteProcessor`, which sends each microphone frame and hands back the next frame of the
agent's audio from the jitter buffer. The session is recorded here as kind `remote`: user.wav
as sent, agent.wav as played.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ppchat.constants import FRAME_SAMPLES, SAMPLE_RATE
from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.pipeline import PrefillReport
from ppchat.engine.runtime import FrameResult
from ppchat.errors import PPChatError
from ppchat.models.voices import PRESET_VOICES
from ppchat.net.client import ChatClient, chat_url, http_url
from ppchat.net.params import ChatParams
from ppchat.net.protocol import HEALTH_PATH
from ppchat.sampling import Sampling
from ppchat.sessions.schema import SessionMeta

SERVER_DEFAULT = "default"  # no voice_prompt: the server's own default voice


class RemoteProcessor:
    """A `FrameProcessor` whose model runs on the other end of a `ChatClient`."""

    frame_size = FRAME_SAMPLES
    sample_rate = SAMPLE_RATE
    # How long a step waits for its own frame's answer: most of a frame, leaving the step
    # thread time to resample and queue the audio within the 80 ms.
    wait = 0.06

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self._out = np.zeros(self.frame_size, dtype=np.float32)
        self._server_ms: dict[str, float] = {}  # the server's latest step timings (0x04), shown until the next

    def process(self, pcm: np.ndarray) -> FrameResult:
        client = self.client
        client.check()
        started = time.perf_counter()
        client.send_frame(pcm)
        local_ms = (time.perf_counter() - started) * 1000.0
        complete = client.jitter.read(self._out, wait=self.wait)
        pieces = _drain(client.texts)
        token = None
        for record in _drain(client.records):
            if record.get("ms"):
                self._server_ms = {k: float(v) for k, v in record["ms"].items() if isinstance(v, (int, float))}
            if isinstance(record.get("token"), int):
                token = record["token"]
        timings = dict(self._server_ms)
        # The step's time is the server's; a server that sends no timings (NVIDIA's) leaves the
        # client's own work (encoding), never the wait for the network.
        compute_ms = timings.pop("total", local_ms)
        if client.rtt_ms is not None:
            timings["rtt"] = client.rtt_ms
        timings["jitter"] = client.jitter_ms
        timings["buffer"] = client.jitter.buffered_ms
        return FrameResult(pcm=self._out.copy(), text_token=token if pieces else None,
                           text_piece="".join(pieces) or None, timings_ms=timings, compute_ms=compute_ms,
                           missing=not complete)


def _drain(queue) -> list:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out


def voice_file(name: str) -> str:
    """The reference server wants the file name (`NATF2.pt`); ppchat's takes either."""
    return name if Path(name).suffix else f"{name}.pt"


class RemoteConversation(Conversation):
    """`Conversation` against a server: same controls, same events, the model elsewhere."""

    busy_wait = 10.0  # seconds a reconnect waits for a server that is still busy

    def __init__(self, server: str, options: TalkOptions, token: str | None = None, audio_factory=None) -> None:
        self.server_url = chat_url(server)
        self.token = token
        self.client: ChatClient | None = None
        self.server_info: dict[str, Any] = {}
        self.health: dict[str, Any] = {}
        super().__init__(options, audio_factory=audio_factory)

    # ---------------------------------------------------------------- the model side, remote

    def _load(self, model) -> None:
        self.health = fetch_health(self.server_url, self.token)

    def _default_voice(self) -> str:
        return SERVER_DEFAULT

    def _model_info(self) -> dict[str, Any]:
        known = self.server_info or self.health
        model = known.get("model") or "?"
        host = self.server_url.split("//", 1)[1].split("/", 1)[0]
        return {"model": f"{model} @ {host}", "model_id": model, "is_demo": bool(known.get("is_demo")),
                "quantization": known.get("quantization") or "none", "server": self.server_url}

    def voices(self) -> list[str]:
        names = self.health.get("voices") if isinstance(self.health.get("voices"), list) else list(PRESET_VOICES)
        return [SERVER_DEFAULT] + [str(n) for n in names]

    def _condition(self, sampling: Sampling) -> RemoteProcessor:
        voice = None if self.voice_name in (SERVER_DEFAULT, "", None) else voice_file(self.voice_name)
        params = ChatParams(voice_prompt=voice, text_prompt=self.prompt_text, seed=sampling.seed,
                            text_temperature=sampling.text.temp, text_topk=sampling.text.top_k,
                            audio_temperature=sampling.audio.temp, audio_topk=sampling.audio.top_k, metadata=True)
        self._notice("info", f"connecting to {self.server_url}: voice {self.voice_name}, prompt '{self.prompt_name}'")
        started = time.perf_counter()
        client = self._connect(params)
        self.server_info = client.info or self.server_info  # its info may come just after the handshake
        self.client = client
        self.prefill = PrefillReport(voice_frames=0, prompt_tokens=0, calls=0, seconds=time.perf_counter() - started)
        return RemoteProcessor(client)

    def _connect(self, params: ChatParams) -> ChatClient:
        # A server that runs one conversation at a time is still saving the last one for a
        # moment after a reconnect (a new voice or prompt): "busy" is retried for a while.
        deadline = time.monotonic() + self.busy_wait
        while True:
            client = ChatClient(self.server_url, params, self.token)
            client.on_info = self._server_info_arrived
            try:
                client.connect()
                return client
            except PPChatError:
                if not (client.error or "").startswith("busy") or time.monotonic() > deadline:
                    raise
            time.sleep(0.25)

    def _server_info_arrived(self, info: dict[str, Any]) -> None:
        self.server_info = info
        note = info.get("note")
        if isinstance(note, str) and note:  # e.g. a batch server runs every conversation at its own sampling
            self._notice("warning", f"the server says: {note}")

    def _session_meta(self, client: str | None) -> SessionMeta:
        meta = super()._session_meta(client)
        meta.kind = "remote"
        meta.server = self.server_url
        return meta

    def stop(self, stop_reason: str | None = None) -> None:
        self.abandon_start()  # as Conversation.stop: a start still connecting gives up, not this waits
        with self._lock:
            super().stop(stop_reason)
            client, self.client = self.client, None
            if client is not None:
                client.close()


def fetch_health(chat: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """A ppchat server's /health (model, voices), or {} for a server without one (NVIDIA's).

    An unreachable server is an error now rather than at the first start."""
    request = urllib.request.Request(http_url(chat, HEALTH_PATH),
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        body = exc.read(65536) if exc.code == 503 else b""  # 503: busy now, but it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PPChatError(f"cannot reach {chat} ({reason}); is `ppchat serve` running there, and the address right?") from None
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
