"""Step latency with echo cancellation on and off, on the demo model.

    .venv/bin/python benchmarks/aec_step_latency.py [--seconds 20] [--rounds 2] [--json OUT.json]

The live path on the simulated sound card (ArrayAudio with a room, real time): the demo
model answers a speech-like microphone while its own voice comes back through the room.
Runs alternate AEC off / on (`--rounds` pairs, so drift in the machine's load hits both
alike). Reported per setting: ppchat's step latency (`ms.total`: the model's step, as the
console and the recording show it) p50/p95/max and late steps, and, with AEC on, what the
echo path itself costs per 80 ms frame on the step thread (resampling, delay measurement,
AEC3), timed around `frames_waiting`. First, since a shared machine's load moves more than
AEC3 costs, the same comparison frame by frame under one load (`interleaved`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    from ppchat.engine.aec import EchoCanceller
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ppchat.engine.aec import EchoCanceller
from ppchat.engine.echo_path import EchoCancelledCapture
from ppchat.engine.events import EventBus, StepEvent
from ppchat.engine.pipeline import ModelPipeline
from ppchat.engine.prompts import PRESETS
from ppchat.engine.runtime import DuplexRuntime
from ppchat.engine.speechlike import room_response, speech_like
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.models.loader import load_model
from ppchat.sampling import Sampling

RATE = 24000


class TimedEchoPath(EchoCancelledCapture):
    """The echo path, timing the work each call does (it runs on the step thread)."""

    costs_ms: list[float] = []

    def frames_waiting(self) -> int:
        started = time.perf_counter()
        done = self._pos
        n = super().frames_waiting()
        if self._pos > done:  # only calls that cancelled something
            TimedEchoPath.costs_ms.append((time.perf_counter() - started) * 1000.0 * 1920 / (self._pos - done))
        return n


def run_once(pipeline: ModelPipeline, seconds: float, aec: bool) -> dict:
    mic = speech_like(seconds, RATE, seed=7, pitch_hz=(180, 280), rms=0.05)
    audio = ArrayAudio(mic, RATE, realtime=True, room=room_response(RATE, seed=2))
    pipeline.start(None, PRESETS["casual"])
    bus = EventBus()
    sub = bus.subscribe(maxlen=100_000)
    TimedEchoPath.costs_ms = []
    runtime = DuplexRuntime(pipeline, audio, bus, canceller=EchoCanceller(RATE) if aec else None)
    if aec:
        import ppchat.engine.runtime as runtime_module

        runtime_module.EchoCancelledCapture = TimedEchoPath
    try:
        runtime.start()
        runtime.join(timeout=seconds * 4 + 30)
    finally:
        runtime.stop()
        import ppchat.engine.runtime as runtime_module

        runtime_module.EchoCancelledCapture = EchoCancelledCapture
    steps = [e for e in sub.drain() if isinstance(e, StepEvent) and "total" in e.timings_ms]
    totals = np.array([e.timings_ms["total"] for e in steps[25:]])  # after 2 s of warm-up
    out = {
        "aec": aec,
        "steps": len(totals),
        "total_ms": {"p50": round(float(np.percentile(totals, 50)), 2), "p95": round(float(np.percentile(totals, 95)), 2),
                     "max": round(float(totals.max()), 2)},
        "late": int(sum(e.late for e in steps)),
    }
    if aec:
        costs = np.array(TimedEchoPath.costs_ms[25:])
        out["echo_path_ms_per_frame"] = {"p50": round(float(np.percentile(costs, 50)), 2),
                                         "p95": round(float(np.percentile(costs, 95)), 2)}
    return out


def interleaved(pipeline: ModelPipeline, frames: int) -> dict:
    """Frame by frame, alternating: the model's step alone, then the echo path's work for one
    frame (AEC3 on 8 sub-frames with a room's echo) followed by the model's step. Both halves
    see the same load, which on a shared machine moves more than AEC3 costs."""
    mic = speech_like(frames * 0.08 + 1, RATE, seed=7, pitch_hz=(180, 280), rms=0.05)
    far = speech_like(frames * 0.08 + 1, RATE, seed=1, rms=0.05)
    from ppchat.engine.speechlike import convolve

    mic = mic + convolve(far, room_response(RATE, seed=2))
    pipeline.start(None, PRESETS["casual"])
    aec = EchoCanceller(RATE)
    alone, with_aec, aec_only = [], [], []
    for i in range(frames):
        frame = mic[i * 1920:(i + 1) * 1920]
        started = time.perf_counter()
        if i % 2:
            cleaned = aec.process(frame, far[i * 1920:(i + 1) * 1920])
            middle = time.perf_counter()
            pipeline.process(cleaned)
            done = time.perf_counter()
            with_aec.append((done - started) * 1000.0)
            aec_only.append((middle - started) * 1000.0)
        else:
            pipeline.process(frame)
            alone.append((time.perf_counter() - started) * 1000.0)

    def stats(values: list[float]) -> dict:
        v = np.array(values[10:])
        return {"p50": round(float(np.percentile(v, 50)), 2), "p95": round(float(np.percentile(v, 95)), 2),
                "max": round(float(v.max()), 2)}

    return {"frames": frames, "model_step_ms": stats(alone), "aec_plus_model_step_ms": stats(with_aec), "aec_ms": stats(aec_only)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=600, help="frames of the interleaved comparison (default 600)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model = load_model("demo", depformer_steps=8, show_progress=False)
    pipeline = ModelPipeline(model, Sampling(seed=1))
    same_load = interleaved(pipeline, args.frames)
    runs = [run_once(pipeline, args.seconds, aec) for _ in range(args.rounds) for aec in (False, True)]
    text = json.dumps({"interleaved": same_load, "seconds": args.seconds, "runs": runs}, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
