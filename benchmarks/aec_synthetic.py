"""Echo cancellation in a synthetic room: ERLE, convergence time, double talk, CPU.

    .venv/bin/python benchmarks/aec_synthetic.py [--seconds 30] [--json OUT.json]

A speech-like far end (engine/speechlike.py) goes through a room response (direct path
after 40 ms, a 200 ms reverberant tail; the echo ends up 7 dB below the far end) and white
noise at -70 dBFS is added (the far end's speech is at -26 dBFS RMS): that
is the microphone. The canceller (engine/aec.py, AEC3 at 24 kHz, 10 ms sub-frames) gets
the microphone and the far end, as on the live path.

* ERLE: 10·log10(microphone energy / output energy) with no near-end talker, from 2 s on.
* Convergence: the end of the first 0.5 s window from which every later window with echo
  (at least 30 dB above the noise) has it at least 20 dB down.
* Double talk: a second talker (another seed, higher pitch) is added to the microphone for
  the whole run, at several levels relative to the echo; the correlation of the output,
  shifted back by the canceller's own latency, with that clean near end, from 2 s on (and,
  for comparison, of the raw microphone).
* CPU: process time of the canceller (plus the ERLE meter) per second of audio.
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
    from ppchat.engine.speechlike import convolve, room_response, speech_like
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ppchat.engine.aec import EchoCanceller
    from ppchat.engine.speechlike import convolve, room_response, speech_like

RATE = 24000
SETTLED_S = 2.0
WINDOW_S = 0.5


def cancel(far: np.ndarray, mic: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Run a fresh canceller over the whole signal in 80 ms model frames; (output, CPU s, latency)."""
    aec = EchoCanceller(RATE)
    frame = 1920
    n = (mic.shape[0] // frame) * frame
    out = np.zeros(n, dtype=np.float32)
    started = time.process_time()
    for i in range(0, n, frame):
        out[i:i + frame] = aec.process(mic[i:i + frame], far[i:i + frame])
    return out, time.process_time() - started, aec.latency


def energy_db(a: np.ndarray, b: np.ndarray) -> float:
    ea = float(np.sum(np.square(a, dtype=np.float64)))
    eb = float(np.sum(np.square(b, dtype=np.float64)))
    return 10.0 * np.log10(ea / max(eb, 1e-30))


def convergence_s(echo: np.ndarray, noise: np.ndarray, out: np.ndarray, floor_db: float = 20.0) -> float:
    w = int(WINDOW_S * RATE)
    # Only windows whose echo stands 30 dB above the noise can show 20 dB of cancellation.
    starts = [s for s in range(0, out.shape[0] - w + 1, w) if energy_db(echo[s:s + w], noise[s:s + w]) >= 30.0]
    mic = echo + noise
    good = [energy_db(mic[s:s + w], out[s:s + w]) >= floor_db for s in starts]
    for k in range(len(starts)):
        if all(good[k:]):
            return (starts[k] + w) / RATE
    return float("inf")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def run_room(seconds: float = 30.0, *, delay_s: float = 0.04, tail_s: float = 0.2, noise_dbfs: float = -70.0,
             near_to_echo_db: tuple[float, ...] = (6.0, 12.0, 18.0)) -> dict:
    far = speech_like(seconds, RATE, seed=1, pitch_hz=(90, 160), rms=0.05)
    voice = speech_like(seconds, RATE, seed=7, pitch_hz=(180, 280), rms=0.05)
    echo = convolve(far, room_response(RATE, delay_s=delay_s, tail_s=tail_s, gain=0.5, seed=2))
    noise = (np.random.default_rng(3).standard_normal(far.shape[0]) * 10 ** (noise_dbfs / 20)).astype(np.float32)

    mic = echo + noise
    out, cpu_s, latency = cancel(far, mic)
    n = out.shape[0]
    settled = int(SETTLED_S * RATE)
    erle = energy_db(mic[settled:n], out[settled:n])
    converged = convergence_s(echo[:n], noise[:n], out)

    double_talk = []
    for ratio_db in near_to_echo_db:
        near = voice * np.float32(10 ** ((ratio_db - energy_db(voice, echo)) / 20))
        talk = mic + near
        out_dt, _, _ = cancel(far, talk)
        clean = near[settled:n - latency]
        double_talk.append({
            "near_to_echo_db": ratio_db,
            "corr": round(correlation(out_dt[settled + latency:n], clean), 4),
            "corr_without_aec": round(correlation(talk[settled:n - latency], clean), 4),  # what the model hears with no AEC
        })
    return {
        "seconds": seconds,
        "room": {"delay_s": delay_s, "tail_s": tail_s, "gain": 0.5, "noise_dbfs": noise_dbfs},
        "echo_to_far_db": round(energy_db(echo, far), 2),
        "erle_db": round(erle, 2),
        "converged_s": converged,
        "double_talk": double_talk,
        "latency_samples": latency,
        "cpu_percent_one_core": round(100.0 * cpu_s / (n / RATE), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--delay", type=float, default=0.04, help="direct-path delay of the room, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run_room(args.seconds, delay_s=args.delay)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
