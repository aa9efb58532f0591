"""Load on `ppchat serve --max-conversations N`: N websocket clients at once on 127.0.0.1.

For each N asked for, a server is started in a child process (`ppchat serve --max-conversations N`,
or, with `--config 7b`, the same server around a random full-size model, as `ppchat bench --config
7b` builds it), and N clients in this process join it `--stagger` seconds apart, each streaming a
speech-like signal as Ogg/Opus in real time (one 80 ms packet per page) and reading the agent's
audio, text and per-step metadata (0x04) back. After `--seconds` of audio each client leaves; the
server is then stopped with SIGINT, as Ctrl-C stops it, and must exit cleanly.

Reported per N, over the steady part (from `--warmup` seconds after the last client joined):
- `step_ms`: the batched frame's time as each row's step metadata gives it (one frame, all rows);
- `late`: computed steps over 80 ms; `dropped`: input frames dropped by the late-frame policy;
  `silence_filled`: frames a row heard silence because its client's audio was not there in time;
- `round_trip_ms`: from a client's frame leaving it to the metadata of the step that heard it
  arriving (the agent audio of that step comes just before): the gather wait, the step, Opus both
  ways, the websocket and the queues;
- `join_s`: connect to handshake (the prompts run meanwhile, between frames of the others), and
  `stall_ms`: the longest pause between two steps a running client saw while another joined.
Also the whole run's counts, what `/health` said with all N connected, and the server's exit code.

    .venv/bin/python benchmarks/serve_load.py --conversations 1,2,4 --seconds 20 \\
        --json benchmarks/results/cpu/serve_load_demo.json
    # on a GPU host:
    .venv/bin/python benchmarks/serve_load.py --config 7b --quantize 4 --conversations 1,4,8 \\
        --seconds 30 --machine "NVIDIA H200" --json benchmarks/results/h200/serve_load_7b_q4.json

It stops by itself and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

FRAME = 1920
FRAME_S = 0.08


def speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    voiced = np.sin(2 * np.pi * (1.1 + 0.1 * seed) * t) > -0.3
    return (0.25 * np.sin(2 * np.pi * (160 + 10 * seed + 60 * np.sin(2 * np.pi * 0.7 * t)) * t) * voiced
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def summary(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "p50": round(float(np.median(v)), 2), "p95": round(float(np.percentile(v, 95)), 2),
            "p99": round(float(np.percentile(v, 99)), 2), "max": round(float(v.max()), 2),
            "mean": round(float(v.mean()), 2)}


# ------------------------------------------------------------------------------------------- server


def serve_child(args) -> None:
    """The server of a `--config` run: `ppchat serve`'s objects around a random full-size model."""
    from ppchat.conversation import Conversation, TalkOptions
    from ppchat.engine.bench import BenchOptions, build_model
    from ppchat.net.server import ChatServer, ServeOptions, ServerThread
    from ppchat.served import ServedBatch

    n = args.serve_child
    model = build_model(BenchOptions(model=args.model, config=args.config, quantize=args.quantize))
    options = TalkOptions(record=args.sessions_dir is not None, sessions_dir=args.sessions_dir, monitor=False)
    conv = ServedBatch(options, n, model=model) if n > 1 else Conversation(options, model=model)
    thread = ServerThread(ChatServer(conv, ServeOptions(port=0, idle_timeout=30, max_conversations=n)))
    try:
        thread.start()
        print(f"ppchat serve: http://127.0.0.1:{thread.port}", file=sys.stderr, flush=True)
        thread.wait()
    except KeyboardInterrupt:
        pass
    finally:
        thread.stop()
        conv.close()


def start_server(args, n: int, sessions: Path | None) -> tuple[subprocess.Popen, int, list[str], Path]:
    if args.config:
        command = [sys.executable, __file__, "--serve-child", str(n), "--config", args.config]
        if args.quantize:
            command += ["--quantize", str(args.quantize)]
        if sessions is not None:
            command += ["--sessions-dir", str(sessions)]
    else:
        command = [sys.executable, "-m", "ppchat", "serve", "--model", args.model, "--port", "0", "--no-monitor",
                   "--idle-timeout", "30", "--max-conversations", str(n)]
        if args.quantize:
            command += ["--quantize", str(args.quantize)]
        command += ["--sessions-dir", str(sessions)] if sessions is not None else ["--no-record"]
    log = tempfile.NamedTemporaryFile("w+", prefix="ppchat-serve-load-", suffix=".log", delete=False)
    proc = subprocess.Popen(command, stderr=log, text=True)  # a file: a pipe nobody reads would block the server
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        match = re.search(r"ppchat serve: http://127\.0\.0\.1:(\d+)", Path(log.name).read_text())
        if match:
            return proc, int(match.group(1)), command, Path(log.name)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {' '.join(command)}\n{Path(log.name).read_text()[-3000:]}")


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


# ------------------------------------------------------------------------------------------- clients


async def client(port: int, index: int, delay: float, seconds: float) -> dict:
    """One conversation: join after `delay`, stream `seconds` of audio in real time, read everything back."""
    import aiohttp

    from ppchat.net import protocol
    from ppchat.net.opus import OggOpusEncoder
    from ppchat.net.protocol import Kind

    await asyncio.sleep(delay)
    pcm = speech(seconds, index)
    out = {"sent": [], "steps": [], "errors": [], "audio_pages": 0}
    url = f"ws://127.0.0.1:{port}/api/chat?seed={100 + index}&ppchat_metadata=1"
    connect = time.monotonic()
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        handshake = asyncio.Event()

        async def read():
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                kind, payload = msg.data[0], msg.data[1:]
                if kind == Kind.HANDSHAKE:
                    out["joined"] = time.monotonic()
                    handshake.set()
                elif kind == Kind.METADATA:
                    m = json.loads(payload)
                    if m.get("type") == "step":
                        out["steps"].append((time.monotonic(), m))
                elif kind == Kind.AUDIO:
                    out["audio_pages"] += 1
                elif kind == Kind.ERROR:
                    out["errors"].append(payload.decode(errors="replace"))
            handshake.set()

        reader = asyncio.create_task(read())
        await asyncio.wait_for(handshake.wait(), 300)
        if "joined" in out:
            out["join_s"] = out["joined"] - connect
            encoder = OggOpusEncoder(packet_ms=80, packets_per_page=1)
            t0 = time.monotonic()
            for k in range(len(pcm) // FRAME):
                await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_S - time.monotonic()))  # its audio is "captured"
                if ws.closed:
                    break
                try:
                    for page in encoder.encode(pcm[k * FRAME:(k + 1) * FRAME]):
                        await ws.send_bytes(protocol.audio(page))
                except ConnectionResetError:
                    break
                out["sent"].append(time.monotonic())
            await asyncio.sleep(1.0)  # the last steps
        await ws.close()
        await reader
    return out


def analyse(results: list[dict], warmup: float) -> dict:
    joined = [r["joined"] for r in results if "joined" in r]
    steady_from = max(joined) + warmup if joined else 0.0
    rows, step_ms, trips, stalls = [], [], [], []
    totals = {"steps": 0, "late": 0, "dropped": 0, "silence_filled": 0}
    steady = dict.fromkeys(totals, 0)
    for r in results:
        consumed = 0  # input frames taken so far: every step but those where silence stood in for a late client
        row = {"join_s": round(r.get("join_s", float("nan")), 3), "errors": r["errors"], "steps": len(r["steps"]),
               "frames_sent": len(r["sent"]), "audio_pages": r["audio_pages"]}
        last_wall = None
        for arrived, s in r["steps"]:
            filled = s.get("filled")
            computed = filled not in ("agent", "both")
            counts = {"steps": 1, "late": int(computed and s.get("late", False)), "dropped": int(not computed),
                      "silence_filled": int(filled == "user")}
            in_steady = arrived >= steady_from
            for k, v in counts.items():
                totals[k] += v
                if in_steady:
                    steady[k] += v
            if computed and in_steady:
                step_ms.append(s["ms"]["total"])
                if filled != "user" and consumed < len(r["sent"]):
                    trips.append((arrived - r["sent"][consumed]) * 1000)
            if filled != "user":
                consumed += 1
            if last_wall is not None and any(last_wall < j < arrived for j in joined if j != r.get("joined")):
                stalls.append((arrived - last_wall) * 1000)
            last_wall = arrived
        rows.append(row)
    return {"step_ms": summary(step_ms), "round_trip_ms": summary(trips), "steady": steady, "whole_run": totals,
            "stall_while_another_joined_ms": summary(stalls), "clients": rows}


def run_n(args, n: int) -> dict:
    sessions = Path(tempfile.mkdtemp(prefix="ppchat-serve-load-")) if args.record else None
    proc, port, command, log = start_server(args, n, sessions)
    seen = {}

    async def main():
        tasks = [asyncio.create_task(client(port, i, i * args.stagger, args.seconds)) for i in range(n)]
        await asyncio.sleep((n - 1) * args.stagger + 2.0)
        seen["health"] = await asyncio.get_running_loop().run_in_executor(None, health, port)
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 60 s"
    if code not in (0, 130):  # 130: stopped by Ctrl-C, as asked
        print(f"the server of N={n} ended with {code}; its log: {log}", file=sys.stderr)
    else:
        log.unlink()
    result = {"conversations": n, "server": " ".join(command[1:] if not args.config else command[2:]),
              "health_with_all_connected": seen.get("health", {}).get("conversations"), "server_exit": code,
              **analyse(results, args.warmup)}
    if sessions is not None:
        result["sessions_saved"] = sum(1 for p in sessions.iterdir() if p.is_dir())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", default="1,2,4", help="N, or several: 1,2,4 (default)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio each client sends (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after the last join left out (default 2)")
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between two clients' joins (default 0.5)")
    parser.add_argument("--model", default="demo", help="the server's --model (default demo)")
    parser.add_argument("--config", default=None, choices=("7b",), help="a random full-size model instead of --model")
    parser.add_argument("--quantize", type=int, choices=(4, 8), default=None)
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="the server records no sessions (default: it records, into a temporary folder)")
    parser.add_argument("--machine", default=None, help="what to call this machine in the result")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--serve-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sessions-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child is not None:
        return serve_child(args)
    try:
        counts = [int(x) for x in args.conversations.split(",")]
    except ValueError:
        raise SystemExit(f"--conversations {args.conversations!r}: give numbers such as 1,2,4") from None
    if not counts or min(counts) < 1 or args.seconds <= args.warmup + (max(counts) - 1) * args.stagger:
        raise SystemExit("each N must be at least 1, and --seconds longer than --warmup plus the joins' stagger")
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="ppchat-bench-"))
    result = {"machine": args.machine or f"{platform.node()}, {platform.processor() or platform.machine()}, "
                                         f"{os.cpu_count()} cores",
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": args.seconds,
              "warmup": args.warmup, "stagger": args.stagger, "model": args.config and f"random {args.config}" or args.model,
              "quantize": args.quantize, "runs": [run_n(args, n) for n in counts]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
