"""Soak test: a long `ppchat talk --no-tui` on the demo model through the virtual sound card.

Starts the PulseAudio null sink (`tools/virtual-audio.sh`), runs the real CLI in a child
process for `--minutes`, samples its resident memory and the machine's load average every
`--sample-s` seconds, then loads the recorded session and reports:

* steps expected (the live wall-clock span / 80 ms) vs steps recorded, and lost (gap) steps;
* late, dropped and filled frames, underruns and xruns (from the session's statistics);
* RSS after warm-up and at the end;
* each WAV's length against the step count (they must be equal: step n = samples n*1920...);
* the exit status and anything the child printed at warning or error level.

    .venv/bin/python benchmarks/soak.py --minutes 60 --out benchmarks/results/soak/soak-60min.json

The figures go in BENCHMARKS.md ("Soak"). This is a benchmark, not a test: it takes as long
as it is told to and its figures depend on the machine's load, which it records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAME_S = 0.08
FRAME_SAMPLES = 1920


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS / load sampling period")
    parser.add_argument("--warmup-s", type=float, default=30.0, help="RSS 'start' is the first sample after this")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--device", default="pulse", help="PortAudio device for both directions")
    parser.add_argument("--sink", default="ppchat_soak",
                        help="a private PulseAudio null sink (its monitor is the microphone), so that the soak "
                             "neither hears nor disturbs other users of the virtual card; '' for the default one")
    parser.add_argument("--ppchat", default=str(REPO / ".venv" / "bin" / "ppchat"))
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", "/tmp/ppchat-xdg")
    subprocess.run(["bash", str(REPO / "tools" / "virtual-audio.sh")], env=env, check=True, capture_output=True)
    if args.sink:
        sinks = subprocess.run(["pactl", "list", "short", "sinks"], env=env, capture_output=True, text=True).stdout
        if args.sink not in sinks.split():
            subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={args.sink}", "rate=24000",
                            "channels=1"], env=env, check=True, capture_output=True)  # fmt: skip
        # libpulse (behind PortAudio's ALSA "pulse" device) opens these instead of the defaults.
        env["PULSE_SINK"], env["PULSE_SOURCE"] = args.sink, f"{args.sink}.monitor"

    sessions = Path(tempfile.mkdtemp(prefix="ppchat-soak-"))
    log_path = sessions / "talk.log"
    duration = args.minutes * 60
    cmd = [args.ppchat, "talk", "--no-tui", "--model", "demo", "--duration", str(duration),
           "--sessions-dir", str(sessions), "--input-device", args.device, "--output-device", args.device,
           "--no-monitor"]  # fmt: skip
    started = time.time()
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    samples = []
    try:
        while child.poll() is None:
            time.sleep(args.sample_s)
            rss = rss_mb(child.pid)
            if rss is not None:
                samples.append({"t": round(time.time() - started, 1), "rss_mb": round(rss, 1),
                                "load": [round(x, 2) for x in os.getloadavg()]})  # fmt: skip
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
    rc = child.wait()
    elapsed = time.time() - started

    from ppchat.sessions.store import load_session, session_dirs

    dirs = session_dirs(sessions)
    if not dirs:
        print(f"no session was recorded; see {log_path}", file=sys.stderr)
        return 1
    session = load_session(dirs[-1])
    steps = session.steps
    stats = session.info.stats
    span = steps[-1].wall_time - steps[0].wall_time if len(steps) > 1 else 0.0
    after_warmup = [s for s in samples if s["t"] >= args.warmup_s] or samples
    loads = [s["load"][0] for s in samples]
    messages = [line for line in log_path.read_text().splitlines() if "[warning]" in line or "[error]" in line]
    report = {
        "command": " ".join(cmd),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "wall_s": round(elapsed, 1),
        "exit_status": rc,
        "steps_expected": round(span / FRAME_S) + 1 if steps else 0,
        "steps_recorded": len(steps),
        "last_step": steps[-1].step if steps else None,
        "lost_steps": stats.lost_steps,
        "late_frames": stats.late_frames,
        "dropped_frames": stats.dropped_frames,
        "filled_frames": stats.filled_frames,
        "underruns": stats.underruns,
        "xruns": stats.xruns,
        "step_ms": stats.total_ms,
        "rss_mb_start": after_warmup[0]["rss_mb"] if after_warmup else None,
        "rss_mb_end": samples[-1]["rss_mb"] if samples else None,
        "rss_mb_max": max((s["rss_mb"] for s in samples), default=None),
        "load_avg_1min": {"min": min(loads, default=None), "mean": round(sum(loads) / len(loads), 2) if loads else None,
                          "max": max(loads, default=None)},  # fmt: skip
        "user_wav_samples": len(session.user_audio),
        "agent_wav_samples": len(session.agent_audio),
        "timeline_samples": session.frames * FRAME_SAMPLES,
        "session_status": session.status,
        "session_warnings": session.warnings,
        "child_warnings": messages,
        "session": str(session.path),
        "rss_samples": samples,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
