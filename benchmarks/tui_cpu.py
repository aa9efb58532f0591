"""CPU cost of the ppchat console at the engine's 12.5 events/s.

Runs the real `PPChatApp` in a child process on a real pseudo-terminal (so rendering
and terminal output are included), fed by a synthetic controller whose publisher thread
emits StepEvents (with 1920-sample audio frames, text pieces, level changes) every
80 ms. The child measures its process CPU time over the measuring window and subtracts
the publisher thread's own CPU time (`time.thread_time()` inside that thread), so the
figure is the console's share alone.

    /tmp/venv/bin/python benchmarks/tui_cpu.py                # 20 s at 80x24
    /tmp/venv/bin/python benchmarks/tui_cpu.py --size 160x48 --seconds 20
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import pty
import select
import struct
import sys
import tempfile
import termios
import threading
import time

import numpy as np

FRAME_S = 0.08
WARMUP_S = 2.0


class SyntheticConversation:
    """A stand-in controller: `start` launches a thread publishing a StepEvent every 80 ms."""

    def __init__(self) -> None:
        from ppchat.engine.events import EventBus

        self.bus = EventBus()
        self.running = False
        self.publisher_cpu_s = 0.0
        self.published = 0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.info = {
            "model": "synthetic", "is_demo": True, "quantization": "q4", "input_device": "bench",
            "output_device": "bench", "voice": "NATF2", "prompt": "bench", "prompt_name": "bench",
            "session_dir": "/tmp/ppchat-bench-session",
        }

    def start(self, voice: str, prompt: str) -> None:
        self.running = True
        self._halt.clear()
        self._thread = threading.Thread(target=self._publish, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
        self.running = False

    def restart(self, voice: str, prompt: str) -> None:
        self.stop()
        self.start(voice, prompt)

    def set_mute(self, on: bool) -> None: ...
    def set_half_duplex(self, on: bool) -> None: ...
    def mark(self) -> None: ...

    def voices(self) -> list[str]:
        return ["NATF2"]

    def prompts(self) -> dict[str, str]:
        return {"bench": "bench"}

    def _publish(self) -> None:
        from ppchat.engine.events import StepEvent

        words = [" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
        rng = np.random.default_rng(0)
        t0 = time.monotonic()
        cpu0 = time.thread_time()
        step = 0
        while not self._halt.is_set():
            speaking = (step // 60) % 2 == 0
            amp = 0.2 * (0.6 + 0.4 * math.sin(step / 4)) if speaking else 0.001
            pcm = (rng.standard_normal(1920) * amp).astype(np.float32)
            out = (rng.standard_normal(1920) * (0.001 if speaking else 0.15)).astype(np.float32)
            token, piece = (3, None)
            if not speaking and step % 3 == 0:
                token, piece = 1000 + step, words[(step // 3) % len(words)]
            total = 55.0 + 15.0 * rng.random() + (40.0 if step % 97 == 0 else 0.0)
            self.bus.publish(StepEvent(
                step, step * FRAME_S, time.time(),
                {"encode": 5.0, "temporal": total * 0.6, "depformer": total * 0.25, "decode": 4.0, "total": total},
                token, piece, float(np.sqrt(np.mean(pcm ** 2))), float(np.abs(pcm).max()),
                float(np.sqrt(np.mean(out ** 2))), float(np.abs(out).max()), 1, 2, late=total > 80,
                user_pcm=pcm, agent_pcm=out,
            ))
            step += 1
            self.published = step
            self._halt.wait(max(0.0, t0 + step * FRAME_S - time.monotonic()))
        self.publisher_cpu_s = time.thread_time() - cpu0


def child(seconds: float, result_path: str) -> None:
    """Runs in the pty: the console for WARMUP_S + seconds, then writes the measurement."""
    from ppchat.tui.app import PPChatApp

    conv = SyntheticConversation()
    app = PPChatApp(conv)
    marks: dict[str, float] = {}

    def cpu() -> float:
        return time.process_time()  # all threads of this process

    def begin() -> None:
        marks.update(cpu0=cpu(), wall0=time.monotonic(), pub0=conv.published)

    def end() -> None:
        marks.update(cpu1=cpu(), wall1=time.monotonic(), pub1=conv.published)
        app.exit()

    app.call_later(lambda: (app.set_timer(WARMUP_S, begin), app.set_timer(WARMUP_S + seconds, end)))
    app.run()
    conv.stop()
    # The publisher's CPU for the measured window: its total, scaled to the window's share of its events.
    share = (marks["pub1"] - marks["pub0"]) / max(1, conv.published)
    result = {
        "wall_s": marks["wall1"] - marks["wall0"],
        "process_cpu_s": marks["cpu1"] - marks["cpu0"],
        "publisher_cpu_s": conv.publisher_cpu_s * share,
        "events": marks["pub1"] - marks["pub0"],
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="80x24", help="terminal COLSxROWS (default 80x24)")
    args = parser.parse_args()
    cols, rows = (int(v) for v in args.size.lower().split("x"))
    fd, result_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(sys.stdout.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.environ["TERM"] = "xterm-256color"
        os.environ["COLORTERM"] = "truecolor"
        try:
            child(args.seconds, result_path)
        finally:
            os._exit(0)
    written = 0
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            written += len(chunk)
    os.waitpid(pid, 0)
    with open(result_path) as f:
        r = json.load(f)
    os.unlink(result_path)
    tui_cpu = r["process_cpu_s"] - r["publisher_cpu_s"]
    print(f"terminal {cols}x{rows}, {r['events']} events in {r['wall_s']:.1f} s ({r['events'] / r['wall_s']:.1f}/s)")
    print(f"process CPU {r['process_cpu_s']:.2f} s, publisher thread {r['publisher_cpu_s']:.2f} s")
    print(f"console CPU {tui_cpu:.2f} s = {100 * tui_cpu / r['wall_s']:.1f}% of one core; "
          f"terminal output {written / 1024 / (r['wall_s'] + WARMUP_S):.0f} KiB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
