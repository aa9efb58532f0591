"""What the network path adds: `ppchat talk --server` against `ppchat serve` on loopback, vs local talk.

Three runs of the same speech-like signal, each through an `ArrayAudio` endpoint that delivers
80 ms blocks in real time (no sound card, so the figures are the software path's alone):

1. local talk: the demo model in this process; its step times.
2. serve: `ppchat serve` in a child process on 127.0.0.1, and this process as its client
   (`RemoteConversation`, as `talk --server`). For each microphone frame n the client notes
   when it sent it and when the agent audio of the server's step n arrived; minus the server's
   own step time for n, that is the delay the network path adds (Opus both ways, websocket,
   loopback, the server's queueing). Also: the server's step times as the server reports them,
   and how often the client's step had its own frame's answer in time (else an underrun).

3. the same with an echo in place of the model (`--echo-ms`: each step sleeps that long, then
   returns its input): the network path's own cost without the model's CPU load competing
   with it, on a machine shared with other work.

It stops by itself after the given seconds per run and talks to 127.0.0.1 only.

    .venv/bin/python benchmarks/net_latency.py --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

FRAME = 1920


def speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 24000)) / 24000
    voiced = np.sin(2 * np.pi * 1.1 * t) > -0.3
    return (0.25 * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.7 * t)) * t) * voiced
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def summary(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "p50": round(float(np.median(v)), 1), "p95": round(float(np.percentile(v, 95)), 1),
            "max": round(float(v.max()), 1), "mean": round(float(v.mean()), 1)}


def run(conv, seconds: float, warmup: float):
    from ppchat.engine.events import StepEvent

    sub = conv.bus.subscribe(maxlen=100_000, name="bench")
    conv.start()
    client = getattr(conv, "client", None)
    if client is not None:
        client.timeline = []
    time.sleep(seconds)
    conv.stop()
    steps = [e for e in sub.drain() if isinstance(e, StepEvent) and e.audio_time >= warmup]
    sub.close()
    return steps, (client.timeline if client is not None else None)


def local(seconds: float, warmup: float) -> dict:
    from ppchat.conversation import Conversation, TalkOptions
    from ppchat.engine.virtual_io import ArrayAudio

    pcm = speech(seconds + 5)
    options = TalkOptions(model="demo", record=False, monitor=False)
    with Conversation(options, audio_factory=lambda: ArrayAudio(pcm, 24000, realtime=True)) as conv:
        steps, _ = run(conv, seconds, warmup)
    return {"step_ms": summary(e.timings_ms.get("total") for e in steps if "encode" in e.timings_ms),
            "late": sum(e.late for e in steps), "dropped": sum(e.dropped_in for e in steps), "steps": len(steps)}


class _Echo:
    frame_size, sample_rate = FRAME, 24000

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000

    def process(self, pcm):
        from ppchat.engine.runtime import FrameResult

        time.sleep(self.seconds)
        return FrameResult(pcm=pcm, text_token=3, text_piece=None, timings_ms={"encode": 0.0})


def serve_echo(ms: float) -> None:
    """The child of the echo run: a ChatServer whose conversation steps an echo."""
    from ppchat.conversation import Conversation, TalkOptions
    from ppchat.engine.pipeline import PrefillReport
    from ppchat.net.server import ChatServer, ServeOptions, ServerThread

    class EchoConversation(Conversation):
        def _load(self, model):
            self.model = type("M", (), {"info": type("I", (), {"is_demo": True, "source": "echo", "quantization": "none"})(),
                                        "voices_dir": None})()

        def _condition(self, sampling):
            self.prefill = PrefillReport(0, 0, 0, 0.0)
            return _Echo(ms)

    conv = Conversation.__new__(EchoConversation)
    conv.__init__(TalkOptions(record=False, monitor=False, max_backlog_frames=3))
    thread = ServerThread(ChatServer(conv, ServeOptions(port=0, idle_timeout=30))).start()
    print(f"ppchat serve: http://127.0.0.1:{thread.port}", file=sys.stderr, flush=True)
    thread.wait()


def start_server(echo_ms: float | None = None) -> tuple[subprocess.Popen, int]:
    command = ([sys.executable, __file__, "--serve-echo", str(echo_ms)] if echo_ms is not None else
               [sys.executable, "-m", "ppchat", "serve", "--model", "demo", "--port", "0", "--no-record",
                "--no-monitor", "--idle-timeout", "30"])
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"ppchat serve: http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("ppchat serve did not start")


def served(seconds: float, warmup: float, echo_ms: float | None = None) -> dict:
    from ppchat.conversation import TalkOptions
    from ppchat.engine.virtual_io import ArrayAudio
    from ppchat.net.remote import RemoteConversation

    proc, port = start_server(echo_ms)
    try:
        pcm = speech(seconds + 5)
        options = TalkOptions(record=False, monitor=False)
        with RemoteConversation(f"ws://127.0.0.1:{port}", options,
                                audio_factory=lambda: ArrayAudio(pcm, 24000, realtime=True)) as conv:
            steps, timeline = run(conv, seconds, warmup)
    finally:
        proc.terminate()
        proc.wait(20)
    sent, server_ms, arrived = {}, {}, []
    received = 0
    computed: list[int] = []  # server steps that made audio, in order: the k-th audio frame is computed[k]'s
    for kind, value, t in timeline:
        if kind == "sent":
            sent[value] = t
        elif kind == "step" and value.get("filled") not in ("agent", "both"):
            computed.append(value["step"])
            server_ms[value["step"]] = value["ms"]["total"]
        elif kind == "audio":
            received += value
            while received >= FRAME * (len(arrived) + 1):
                arrived.append(t)
    first = int(warmup / 0.08)
    added, trip = [], []
    for k, t in enumerate(arrived):
        if k >= len(computed):
            break
        step = computed[k]
        if step >= first and step in sent and step in server_ms:
            trip.append((t - sent[step]) * 1000)
            added.append((t - sent[step]) * 1000 - server_ms[step])
    return {
        "server_step_ms": summary(v for s, v in server_ms.items() if s >= first),
        "round_trip_ms": summary(trip),
        "added_by_network_ms": summary(added),
        "client_underruns": sum(e.underruns for e in steps),
        "client_steps": len(steps),
        "server_dropped": sum(1 for kind, v, _ in timeline if kind == "step" and v.get("filled") in ("agent", "both")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="per run (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out at the start of each run")
    parser.add_argument("--echo-ms", type=float, default=40.0, help="the echo run's step time (default 40)")
    parser.add_argument("--serve-echo", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        return serve_echo(args.serve_echo)
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="ppchat-bench-"))
    result = {"machine": f"{os.cpu_count()} cores", "seconds": args.seconds,
              "local_talk": local(args.seconds, args.warmup), "serve_over_loopback": served(args.seconds, args.warmup),
              f"echo_{args.echo_ms:g}ms_over_loopback": served(args.seconds, args.warmup, args.echo_ms)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
