"""Step latency of a live conversation on the demo model with live captions off and on.

Two controllers share one demo model: one without captions, one with (its caption
process stays up across runs, as in a real session with several conversations). Runs
alternate off, on, off, on, ... so that load from elsewhere on the machine falls on
both alike; each run plays the same speech-like user track (bursts of a tone, as the
ASR tests use) in real time through the array audio endpoint, and every step's total
compute time is collected. The "on" runs also count the captions that came back, to
show the recogniser was working meanwhile.

The recogniser is a random Qwen3-ASR checkpoint (no real weights here): `tiny` (the
tests' size) or `0.6b` (the real 0.6B shapes, so the caption process costs what the
real model's arithmetic would; random weights never stop early, so its decode runs
to its token budget: if anything, more work than the real model).

    .venv/bin/python benchmarks/captions_latency.py --asr tiny --runs 3 --seconds 30
    .venv/bin/python benchmarks/captions_latency.py --asr 0.6b --runs 3 --seconds 30 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ppchat.asr.captions import CaptionEvent  # noqa: E402
from ppchat.asr.random_model import build_random_asr  # noqa: E402
from ppchat.conversation import Conversation, TalkOptions  # noqa: E402
from ppchat.engine.events import NoticeEvent, StepEvent  # noqa: E402
from ppchat.engine.virtual_io import ArrayAudio  # noqa: E402
from ppchat.models.loader import load_model  # noqa: E402
from tests.asr_helpers import speech_track  # noqa: E402


def user_track(seconds: float) -> np.ndarray:
    # Utterances of 1-3 s with 1-2 s pauses: captions have steady work, partial and final.
    bursts, t = [], 0.5
    rng = np.random.default_rng(1)
    while t < seconds - 1:
        length = float(rng.uniform(1.0, 3.0))
        bursts.append((t, min(t + length, seconds - 0.5)))
        t += length + float(rng.uniform(1.0, 2.0))
    return speech_track(bursts=bursts, seconds=seconds)


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(totals: list[float]) -> dict:
    return {"steps": len(totals), "p50": round(percentile(totals, 50), 2), "p95": round(percentile(totals, 95), 2),
            "p99": round(percentile(totals, 99), 2), "max": round(max(totals), 2), "mean": round(float(np.mean(totals)), 2),
            "late": int(sum(t > 80.0 for t in totals))}  # fmt: skip


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None elsewhere or once it is gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def one_run(conv: Conversation, track: np.ndarray) -> dict:
    sub = conv.bus.subscribe(maxlen=100_000, name="bench")
    load_before = os.getloadavg()[0]
    worker = conv.captions.process.pid if conv.captions and conv.captions.process else None
    worker_cpu, own_cpu, wall = cpu_seconds(worker), time.process_time(), time.monotonic()
    conv.start(prompt="casual")
    conv.runtime.join(timeout=len(track) / 24000 * 3 + 30)
    conv.stop()
    worker_cpu_after, own_cpu_after, wall = cpu_seconds(worker), time.process_time(), time.monotonic() - wall
    time.sleep(1.0)  # the last captions
    events = sub.drain()
    sub.close()
    steps = [e for e in events if isinstance(e, StepEvent) and e.filled not in ("agent", "both")]
    captions = [e for e in events if isinstance(e, CaptionEvent)]
    return {
        **summary([e.timings_ms["total"] for e in steps]),
        "dropped_in": int(sum(e.dropped_in for e in events if isinstance(e, StepEvent))),
        "captions_final": sum(c.kind == "final" for c in captions),
        "captions_partial": sum(c.kind == "partial" for c in captions),
        "notices": [n.message for n in events if isinstance(n, NoticeEvent) and n.level != "info"],
        "loadavg_1min_before": round(load_before, 2),
        "wall_s": round(wall, 2),
        "engine_process_cpu_s": round(own_cpu_after - own_cpu, 2),
        "caption_process_cpu_s": None if worker_cpu is None or worker_cpu_after is None else round(worker_cpu_after - worker_cpu, 2),
        "totals_ms": [round(e.timings_ms["total"], 2) for e in steps],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr", default="tiny", help="tiny, 0.6b, or a Qwen3-ASR folder")
    p.add_argument("--runs", type=int, default=3, help="runs of each mode (alternating)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ppchat-captions-bench")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()

    if args.asr in ("tiny", "0.6b"):
        asr_dir = args.work / f"random-{args.asr}"
        if not (asr_dir / "config.json").exists():
            build_random_asr(asr_dir, size=args.asr)
    else:
        asr_dir = Path(args.asr)
    model = load_model("demo", cache_root=args.work / "cache", depformer_steps=8, show_progress=False)
    track = user_track(args.seconds)
    common = dict(model="demo", sessions_dir=args.work / "sessions", monitor=False)
    off = Conversation(TalkOptions(**common), model=model, audio_factory=lambda: ArrayAudio(track, 24000, realtime=True))
    on = Conversation(TalkOptions(**common, captions=True, asr_model=str(asr_dir)), model=model,
                      audio_factory=lambda: ArrayAudio(track, 24000, realtime=True))  # fmt: skip
    try:
        one_run(on, track[: 24000 * 5])  # starts the caption process and loads its model
        deadline = time.monotonic() + 300
        while on.captions is not None and on.captions.state == "starting" and time.monotonic() < deadline:
            time.sleep(0.2)
        if on.captions is None or on.captions.state != "on":
            raise SystemExit(f"the caption process did not come up (state {getattr(on.captions, 'state', None)})")
        runs = {"off": [], "on": []}
        for i in range(args.runs):
            for mode, conv in (("off", off), ("on", on)):
                result = one_run(conv, track)
                runs[mode].append(result)
                print(f"run {i + 1} captions {mode:3}: p50 {result['p50']:.1f}  p95 {result['p95']:.1f}  max {result['max']:.1f} ms"
                      f"  late {result['late']}  dropped {result['dropped_in']}  finals {result['captions_final']}"
                      f"  load {result['loadavg_1min_before']}  cpu s: engine {result['engine_process_cpu_s']}"
                      f" captions {result['caption_process_cpu_s']}", flush=True)  # fmt: skip
        restarts = on.captions.restarts if on.captions else None
    finally:
        off.close()
        on.close()
    pooled = {mode: summary([t for r in rs for t in r["totals_ms"]]) for mode, rs in runs.items()}
    for mode in ("off", "on"):
        print(f"pooled captions {mode:3}: " + "  ".join(f"{k} {v}" for k, v in pooled[mode].items()))
    if args.out:
        for rs in runs.values():
            for r in rs:
                r.pop("totals_ms")
        doc = {
            "benchmark": "captions_latency", "asr": args.asr, "runs": args.runs, "seconds": args.seconds,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "command": " ".join(sys.argv), "caption_restarts": restarts, "pooled": pooled, "per_run": runs,
        }  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
