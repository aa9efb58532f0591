"""Echo cancellation live, through the virtual sound card, with a room in the loop.

    .venv/bin/python benchmarks/aec_live.py [--seconds 20] [--json OUT.json]

Needs PulseAudio (tools/virtual-audio.sh); a private null sink is loaded for the run (the
shared one hears everyone's tests) unless --shared-sink. The runtime plays a speech-like "agent" (a
frame processor that plays a prepared signal) through the PortAudio device "pulse"; the
null sink's monitor is the microphone. The monitor hears the speaker exactly, so the room
is applied in this harness, between output and input: the capture ring is replaced by
`RoomRing`, which convolves every captured block with a room response (direct path
after 40 ms, 200 ms tail) and mixes in the user's test speech (another talker, from 60 %
to 80 % of the run) before the ring keeps it. Everything else is ppchat's live path:
one duplex stream (or its fall-back), the far end from the callback, the measured
delay, AEC3 on 10 ms sub-frames.

Reported: the stream layout, the sound card's own delay figure, the measured delay in use
when the user starts and the true one then (plain normalised cross-correlation, in 2 s
windows, of the far end as played and the microphone the harness made, both kept by the
harness; the range over the run too, and the median error of the delay in use against each
window's truth), ERLE over the agent-only part once the measured delay is in use (from a
second after it, 3 s at the earliest: as a whole, per second from the start, and the median
second, since a loaded machine under-runs and loses the echo for a second here and there),
the live ERLE estimate, and how well the user's speech survives (correlation with the clean
speech; the raw microphone's for comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    from ppchat.engine.aec import EchoCanceller
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ppchat.engine.aec import EchoCanceller
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.ringbuffer import RingBuffer
from ppchat.engine.runtime import DuplexRuntime, FrameResult
from ppchat.engine.speechlike import room_response, speech_like

RATE = 24000
FRAME = 1920


class RoomRing(RingBuffer):
    """A capture ring that puts what it is given through a room and adds the user.

    Test harness only: it allocates in the audio callback. It keeps what it made (`wet`),
    from which the true loop delay is measured.
    """

    def __init__(self, capacity: int, room: np.ndarray, user: np.ndarray, keep: int) -> None:
        super().__init__(capacity)
        self._room = room.astype(np.float64)
        self._memory = np.zeros(room.shape[0] - 1)
        self._spectra: dict[int, np.ndarray] = {}  # FFT of the room per block size (overlap-save)
        self._user = user
        self.wet = np.zeros(keep, dtype=np.float32)

    def write(self, block: np.ndarray) -> int:
        start = self.written
        x = np.concatenate([self._memory, block.astype(np.float64)])
        size = 1 << (x.shape[0] - 1).bit_length()
        if size not in self._spectra:
            self._spectra[size] = np.fft.rfft(self._room, size)
        wet = np.fft.irfft(np.fft.rfft(x, size) * self._spectra[size], size)[self._memory.shape[0]:x.shape[0]]
        self._memory = x[block.shape[0]:]
        user = self._user[start:start + block.shape[0]]
        wet[:user.shape[0]] += user
        end = min(start + block.shape[0], self.wet.shape[0])
        if end > start:
            self.wet[start:end] = wet[:end - start]
        return super().write(wet.astype(np.float32))


class TapRing(RingBuffer):
    """A ring that also keeps a copy of everything written (the far end, for the true delay)."""

    def __init__(self, capacity: int, keep: int) -> None:
        super().__init__(capacity)
        self.kept = np.zeros(keep, dtype=np.float32)

    def write(self, block: np.ndarray) -> int:
        start = self.written
        end = min(start + block.shape[0], self.kept.shape[0])
        if end > start:
            self.kept[start:end] = block[:end - start]
        return super().write(block)


class Speaker:
    """A frame processor that plays `signal` and remembers nothing."""

    frame_size = FRAME
    sample_rate = RATE

    def __init__(self, signal: np.ndarray) -> None:
        self._signal = signal
        self._n = 0

    def process(self, pcm: np.ndarray) -> FrameResult:
        out = np.zeros(FRAME, dtype=np.float32)
        chunk = self._signal[self._n * FRAME:(self._n + 1) * FRAME]
        out[:chunk.shape[0]] = chunk
        self._n += 1
        return FrameResult(pcm=out)


@contextlib.contextmanager
def private_sink(rate: int = 48000):
    """A null sink of our own for the duration (the shared one hears every other test's audio):
    PortAudio's "pulse" device plays to it and records its monitor through libpulse's
    PULSE_SINK / PULSE_SOURCE, read when a stream connects."""
    name = f"ppchat_aec_{os.getpid()}"
    module = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={name}", f"rate={rate}", "channels=1"],
                            capture_output=True, text=True, check=True).stdout.strip()
    saved = {k: os.environ.get(k) for k in ("PULSE_SINK", "PULSE_SOURCE")}
    os.environ["PULSE_SINK"], os.environ["PULSE_SOURCE"] = name, f"{name}.monitor"
    try:
        yield name
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run(["pactl", "unload-module", module], capture_output=True)


def true_delay_s(far: np.ndarray, mic: np.ndarray, rate: int, max_lag_s: float = 1.0) -> float:
    """The lag of the normalised cross-correlation's peak (mic[t] ≈ far[t - lag])."""
    n = far.shape[0]
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(mic.astype(np.float64), size) * np.conj(np.fft.rfft(far.astype(np.float64), size)), size)
    lags = np.arange(-int(max_lag_s * rate), int(max_lag_s * rate) + 1)
    return float(lags[int(np.argmax(corr[lags % size]))] / rate)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def energy_db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(a, dtype=np.float64)) / max(np.sum(np.square(b, dtype=np.float64)), 1e-30)))


def run_live(seconds: float = 20.0, *, device: str = "pulse", samplerate: int | None = None) -> dict:
    from ppchat.engine.audio_io import DuplexAudio

    audio = DuplexAudio(device, device, samplerate=samplerate, echo_reference=True)
    rate = audio.capture_rate
    agent = speech_like(seconds + 2, RATE, seed=1, rms=0.05)
    talk_from, talk_to = 0.6 * seconds, 0.8 * seconds
    user24 = np.zeros(int(seconds * RATE), dtype=np.float32)
    a, b = int(talk_from * RATE), int(talk_to * RATE)
    user24[a:b] = speech_like((b - a) / RATE, RATE, seed=7, pitch_hz=(180, 280), rms=0.05)
    from ppchat.engine.resample import resample

    user = resample(user24, RATE, rate)
    room = room_response(rate, delay_s=0.04, tail_s=0.2, seed=2)
    keep = int((seconds + 10) * rate)
    ring = RoomRing(audio.buffers.capture.capacity, room, user, keep=keep)
    audio.buffers.capture = ring
    tap = TapRing(audio.buffers.echo.capacity, keep=keep)
    audio.buffers.echo = tap
    canceller = EchoCanceller(RATE)
    bus = EventBus()
    sub = bus.subscribe(maxlen=100_000)
    runtime = DuplexRuntime(Speaker(agent), audio, bus, canceller=canceller)
    runtime.start()
    events: list = []
    deadline = time.monotonic() + seconds + 20
    while time.monotonic() < deadline and runtime.running and sum(isinstance(e, StepEvent) for e in events) < seconds * 12.5:
        e = sub.get(timeout=0.5)
        if e is not None:
            events.append(e)
    events += sub.drain()
    log = runtime.echo.delay_log
    in_use = [(t, d) for t, d in log if t <= talk_from]
    measured = (in_use or [(0.0, runtime.echo.delay_s)])[-1][1]  # in use when the user starts
    # Until the delay is first measured (2.5-5 s into the agent's speech) the canceller works with
    # the sound card's own figure, often 60-130 ms off; the steady state is judged from a second after.
    settled = max(3.0, float(np.ceil(in_use[0][0] + 1.0))) if in_use else 3.0
    resets = runtime.echo.resets
    runtime.stop()
    # The true loop delay, by plain cross-correlation of the far end as played and the
    # microphone the harness made, in 2 s windows a second apart of the agent-only part after 3 s.
    n = min(tap.written, ring.written, keep)
    windows = range(int(3 * rate), min(n, int(talk_from * rate)) - 2 * rate, rate)
    truths = [true_delay_s(tap.kept[k:k + 2 * rate], ring.wet[k:k + 2 * rate], rate) for k in windows]
    # Under-runs can shift the loop mid-run (and the measured delay follows), so the delay in use
    # when the user starts is compared with the loop as it is then: the last window's.
    truth = truths[-1] if truths else float("nan")
    # And over the run: each window's truth against the measured delay in use at its middle. An
    # under-run can move the estimate for a second before the loop settles back, so the median error.
    errors = []
    for k, true_s in zip(windows, truths):
        middle = k / rate + 1.0
        used = [d for t, d in log if t <= middle]
        if middle >= settled and used:
            errors.append(abs(used[-1] - true_s))
    steps = [e for e in events if isinstance(e, StepEvent)]
    notices = [e.message for e in events if isinstance(e, NoticeEvent)]
    mic = np.concatenate([e.mic_pcm for e in steps])
    heard = np.concatenate([e.user_pcm for e in steps])
    # The user's speech reaches the runtime one capture later than the far end's clock says;
    # find it in the raw track by correlation rather than assume where it is.
    a, b = int(settled * RATE), int(talk_from * RATE)
    user_at = int(np.argmax(np.abs(np.correlate(mic[:min(len(mic), int((talk_to + 2) * RATE))], user24[b:b + RATE], mode="valid"))))
    clean = user24[b:int(talk_to * RATE)]
    seg = slice(user_at, user_at + clean.shape[0])
    erles = [e.erle_db for e in steps[int(settled * 12.5):int(talk_from * 12.5)] if e.erle_db is not None]
    return {
        "seconds": seconds,
        "device": device,
        "device_rate": rate,
        "layout": "duplex" if audio.duplex else "two streams",
        "notices": notices,
        "reported_delay_ms": None if audio.buffers.echo_delay_s() is None else round(audio.buffers.echo_delay_s() * 1000, 1),
        "measured_delay_ms": round(measured * 1000, 1),
        "delay_changes": [[round(t, 2), round(d * 1000, 1)] for t, d in log],
        "true_delay_ms": round(truth * 1000, 1),
        "delay_error_ms_median": round(float(np.median(errors)) * 1000, 1) if errors else None,
        "true_delay_ms_range": [round(min(truths) * 1000, 1), round(max(truths) * 1000, 1)] if truths else None,
        "erle_db": round(energy_db(mic[a:user_at], heard[a:user_at]), 2),
        "erle_db_per_s": [round(energy_db(mic[k:k + RATE], heard[k:k + RATE]), 1) for k in range(0, user_at - RATE + 1, RATE)],
        "settled_from_s": settled,
        "erle_db_median_of_settled_seconds": round(float(np.median(
            [energy_db(mic[k:k + RATE], heard[k:k + RATE]) for k in range(a, user_at - RATE + 1, RATE)] or [np.nan])), 1),
        "live_erle_db_median": round(float(np.median(erles)), 1) if erles else None,
        "user_corr": round(correlation(heard[seg], clean[:len(heard[seg])]), 4),
        "user_corr_raw_mic": round(correlation(mic[seg], clean[:len(mic[seg])]), 4),
        "underruns": sum(e.underruns for e in steps),
        "xruns": sum(e.xruns for e in steps),
        "resets": resets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--device", default="pulse")
    parser.add_argument("--samplerate", type=int, default=48000, help="the harness mixes at this rate (default 48000)")
    parser.add_argument("--shared-sink", action="store_true", help="use the default sink, not a private null sink")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/ppchat-xdg")
    with contextlib.nullcontext() if args.shared_sink else private_sink(args.samplerate):
        result = run_live(args.seconds, device=args.device, samplerate=args.samplerate)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
