"""`ppchat aec-check`: play a test signal through the sound card and measure the echo.

The live path exactly (one duplex stream or its fall-back, the far end from the callback,
the measured delay, AEC3 in 10 ms sub-frames) with a speech-like test signal standing in
for the agent and nobody talking: what the microphone hears is the echo, so comparing it
with what the canceller leaves gives the ERLE. Also reported: how loud the echo is (none
heard with headphones, or with the speaker muted), the loop delay the sound card reports
and the one measured, and the stream layout with any notes from opening it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ppchat.constants import FRAME_RATE, FRAME_SAMPLES, SAMPLE_RATE
from ppchat.engine.aec import EchoCanceller
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.runtime import DuplexRuntime, FrameResult
from ppchat.engine.speechlike import speech_like
from ppchat.errors import AudioError

SETTLE_S = 3.0  # the first seconds: the stream starts, the delay is measured, AEC3 converges
NO_ECHO_DB = -50.0  # echo quieter than this relative to the test signal: nothing to cancel


class SignalPlayer:
    """A frame processor that plays `signal`, then silence: the stand-in for the agent."""

    def __init__(self, signal: np.ndarray, frame_size: int = FRAME_SAMPLES, sample_rate: int = SAMPLE_RATE) -> None:
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self._signal = signal
        self._n = 0

    def process(self, pcm: np.ndarray) -> FrameResult:
        out = np.zeros(self.frame_size, dtype=np.float32)
        chunk = self._signal[self._n * self.frame_size:(self._n + 1) * self.frame_size]
        out[:chunk.shape[0]] = chunk
        self._n += 1
        return FrameResult(pcm=out)


@dataclass
class AecCheck:
    """What `run_check` measured."""

    input_device: str
    output_device: str
    layout: str  # "duplex" or "two streams"
    device_rate: int
    seconds: float
    echo_db: float  # echo level in the microphone relative to the test signal (dB)
    reported_delay_ms: float | None  # PortAudio's stream times
    measured_delay_ms: float | None  # by correlation (None: no clear echo to measure)
    erle_db: float | None  # microphone energy / cancelled energy after SETTLE_S
    live_erle_db: float | None  # the console's running estimate at the end
    underruns: int = 0
    xruns: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def verdict(self) -> str:
        if self.echo_db < NO_ECHO_DB:
            return ("the microphone did not hear the speaker (headphones, or the volume is down?): there is no echo "
                    "to cancel, and nothing to check")
        if self.erle_db is None:
            return "the echo could not be measured"
        if self.erle_db >= 25.0:
            return f"echo cancellation removes {self.erle_db:.0f} dB: talk without headphones"
        if self.erle_db >= 15.0:
            return (f"echo cancellation removes {self.erle_db:.0f} dB: usable; if the agent answers itself, lower the "
                    "volume or press h for the half-duplex gate")
        return (f"echo cancellation removes only {self.erle_db:.0f} dB: use headphones, or the half-duplex gate "
                "(--half-duplex, or h in the console)")


def _energy_db(a: np.ndarray, b: np.ndarray) -> float:
    ea = float(np.sum(np.square(a, dtype=np.float64)))
    eb = float(np.sum(np.square(b, dtype=np.float64)))
    if ea <= 0.0:
        return -math.inf
    return 10.0 * math.log10(ea / max(eb, ea * 1e-12))


def run_check(audio, seconds: float = 10.0, *, level_rms: float = 0.05, seed: int = 1) -> AecCheck:
    """Run the test on `audio` (a `DuplexAudio` with `echo_reference=True`, not started).

    The test signal is speech-like at `level_rms` while active (-26 dBFS by default).
    """
    signal = speech_like(seconds + 1.0, SAMPLE_RATE, seed=seed, rms=level_rms)
    player = SignalPlayer(signal)
    bus = EventBus()
    sub = bus.subscribe(maxlen=100_000, name="aec-check")
    runtime = DuplexRuntime(player, audio, bus, canceller=EchoCanceller(player.sample_rate))
    runtime.start()
    frames = int(math.ceil(seconds * player.sample_rate / player.frame_size))
    deadline = time.monotonic() + seconds + 15.0  # the stream may take a few seconds to come up
    steps: list[StepEvent] = []
    notices: list[NoticeEvent] = []
    try:
        while runtime.running and len(steps) < frames and time.monotonic() < deadline:
            event = sub.get(timeout=0.5)
            if isinstance(event, StepEvent):
                steps.append(event)
            elif isinstance(event, NoticeEvent):
                notices.append(event)
        echo = runtime.echo
        measured = echo.delay_s if echo is not None and echo.tracker.measured else None
        live = echo.erle_db if echo is not None else None
    finally:
        runtime.stop()
    for event in sub.drain():
        if isinstance(event, NoticeEvent):
            notices.append(event)
    errors = [n.message for n in notices if n.level == "error"]
    if runtime.error is not None or errors:
        raise AudioError(f"the echo check could not run: {errors[0] if errors else runtime.error}")
    settle = int(SETTLE_S * FRAME_RATE)
    measured_steps = [e for e in steps[settle:] if e.mic_pcm is not None]
    mic = np.concatenate([e.mic_pcm for e in measured_steps]) if measured_steps else np.zeros(1, np.float32)
    cleaned = np.concatenate([e.user_pcm for e in measured_steps]) if measured_steps else np.zeros(1, np.float32)
    played = np.concatenate([e.agent_pcm for e in measured_steps]) if measured_steps else np.zeros(1, np.float32)
    echo_db = _energy_db(mic, played) if played.any() else -math.inf
    heard = echo_db >= NO_ECHO_DB
    reported = audio.buffers.echo_delay_s()
    return AecCheck(
        input_device=audio.input_device.name,
        output_device=audio.output_device.name,
        layout="duplex" if audio.duplex else "two streams",
        device_rate=audio.capture_rate,
        seconds=len(steps) * player.frame_size / player.sample_rate,
        echo_db=round(echo_db, 1),
        reported_delay_ms=None if reported is None else round(reported * 1000.0, 1),
        measured_delay_ms=None if measured is None else round(measured * 1000.0, 1),
        erle_db=round(_energy_db(mic, cleaned), 1) if heard else None,
        live_erle_db=None if live is None or not heard else round(live, 1),
        underruns=sum(e.underruns for e in steps),
        xruns=sum(e.xruns for e in steps),
        notes=list(audio.buffers.notes),
    )
