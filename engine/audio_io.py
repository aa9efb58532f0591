"""Sound devices: listing, choosing, and a real-time duplex stream feeding two ring buffers.

The PortAudio callbacks here do one thing: copy the microphone block into the capture
ring and copy the next speaker block out of the playback ring (silence when there is
not enough). They never allocate sample buffers (only slices of preallocated arrays,
so the sole transient objects are a few fixed-size views and ints), never block, never
take a lock and never log. Everything else (framing, resampling to the model's rate,
the model itself) happens on the step thread, see `engine/runtime.py`.

sounddevice is imported lazily so that `ppchat --help` stays fast and a missing
PortAudio library becomes an `AudioError` instead of an import-time crash.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppchat.constants import FRAME_SECONDS
from ppchat.engine.ringbuffer import RingBuffer
from ppchat.errors import AudioError

DEFAULT_BLOCK_SECONDS = FRAME_SECONDS  # each callback delivers about one model frame
ECHO_LATENCY_S = 0.3  # suggested PortAudio latency for echo cancellation on ALSA; see DuplexAudio
NO_DEVICE_HINT = (
    "Connect a microphone/speaker, pick another one with --input-device / --output-device "
    "(see `ppchat --list-devices`), or on a machine without a sound card start the virtual "
    "device with tools/virtual-audio.sh."
)
VIRTUAL_AUDIO_RUNTIME_DIR = Path("/tmp/ppchat-xdg")  # where tools/virtual-audio.sh puts PulseAudio by default


def no_device_hint() -> str:
    """NO_DEVICE_HINT, or, when tools/virtual-audio.sh's PulseAudio is running but this process was
    started without the XDG_RUNTIME_DIR that finds it (the usual first-contact mistake), the export
    that fixes it."""
    socket = VIRTUAL_AUDIO_RUNTIME_DIR / "pulse" / "native"
    if not os.environ.get("XDG_RUNTIME_DIR") and socket.is_socket():
        return (
            f"The virtual sound card of tools/virtual-audio.sh is running, but this shell cannot see it: "
            f"run `export XDG_RUNTIME_DIR={VIRTUAL_AUDIO_RUNTIME_DIR}` and start ppchat again."
        )
    return NO_DEVICE_HINT


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise AudioError(f"the PortAudio library cannot be loaded ({exc}); install it (Debian/Ubuntu: apt install libportaudio2)") from exc
    _silence_alsa()
    return sounddevice


_ALSA_HANDLER = None


def _silence_alsa() -> None:
    """Stop libasound from printing to the terminal (e.g. "underrun occurred").

    ALSA writes such messages straight to fd 2, which tears through the console; xruns
    are counted from PortAudio's status flags instead, so the text adds nothing.
    """
    global _ALSA_HANDLER
    if _ALSA_HANDLER is not None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("asound")
    if not name:
        return
    try:
        lib = ctypes.CDLL(name)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
        _ALSA_HANDLER = handler_type(lambda *args: None)
        lib.snd_lib_error_set_handler(_ALSA_HANDLER)
    except (OSError, AttributeError):
        _ALSA_HANDLER = False


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device as shown by `ppchat --list-devices`."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, kind: str) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def describe(self) -> str:
        marks = "".join(m for m, on in ((">", self.is_default_input), ("<", self.is_default_output)) if on)
        return (
            f"{marks:>2} [{self.index}] {self.name} ({self.hostapi}): "
            f"{self.max_input_channels} in, {self.max_output_channels} out, {self.default_samplerate:g} Hz"
        )


def list_devices() -> list[DeviceInfo]:
    """All PortAudio devices. Raises `AudioError` when PortAudio cannot enumerate them."""
    sd = _sounddevice()
    try:
        raw = list(sd.query_devices())
    except sd.PortAudioError as exc:
        raise AudioError(f"cannot list audio devices: {exc}. {no_device_hint()}") from exc
    try:
        hostapis = [h["name"] for h in sd.query_hostapis()]
    except sd.PortAudioError:
        hostapis = []
    default_in, default_out = _default_indices(sd)
    devices = []
    for i, d in enumerate(raw):
        index = int(d.get("index", i))
        api = int(d.get("hostapi", -1))
        devices.append(
            DeviceInfo(
                index=index,
                name=str(d["name"]),
                hostapi=hostapis[api] if 0 <= api < len(hostapis) else "?",
                max_input_channels=int(d["max_input_channels"]),
                max_output_channels=int(d["max_output_channels"]),
                default_samplerate=float(d["default_samplerate"]),
                is_default_input=index == default_in,
                is_default_output=index == default_out,
            )
        )
    return devices


def _default_indices(sd: Any) -> tuple[int, int]:
    try:
        pair = sd.default.device
        return int(pair[0]), int(pair[1])
    except (TypeError, ValueError, IndexError, sd.PortAudioError):
        return -1, -1


def resolve_device(spec: str | int | None, kind: str = "input") -> DeviceInfo:
    """Find the device meant by `spec` for `kind` ("input" or "output").

    `spec` is a device index (int or digit string), a case-insensitive substring of
    the device name (an exact name wins over substrings), or None for the system
    default. Raises `AudioError` naming the available devices when nothing matches,
    when a name is ambiguous, or when there is no device of this kind at all.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    devices = list_devices()
    usable = [d for d in devices if d.channels(kind) > 0]
    if not usable:
        raise AudioError(f"no audio {kind} device found. {no_device_hint()}")
    listing = "\n".join(d.describe() for d in usable)

    if spec is None or (isinstance(spec, str) and not spec.strip()):
        for d in usable:
            if (d.is_default_input if kind == "input" else d.is_default_output):
                return d
        return usable[0]  # no system default: the first device that can do the job

    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for d in usable:
            if d.index == index:
                return d
        raise AudioError(f"audio {kind} device #{index} does not exist or has no {kind} channels. Available {kind} devices:\n{listing}")

    wanted = spec.strip().lower()
    exact = [d for d in usable if d.name.lower() == wanted]
    matches = exact or [d for d in usable if wanted in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioError(f"no audio {kind} device matches {spec!r}. Available {kind} devices:\n{listing}")
    names = "\n".join(d.describe() for d in matches)
    raise AudioError(f"audio {kind} device name {spec!r} is ambiguous; use the index or a longer name. Candidates:\n{names}")


class StreamBuffers:
    """The rings between the audio callbacks and the step thread, plus their counters.

    Capture: the callback writes mic blocks, the step thread reads frames. Playback:
    the step thread writes frames, the callback reads blocks. Output starts once
    `prebuffer` samples are queued (silence before that is start-up, not an underrun);
    after that every callback that finds too little audio plays silence for the
    missing part and counts one underrun.

    A callback that raises records the exception in `error`, plays silence and keeps
    the stream alive; the step thread sees `error` and shuts down with a message.

    With `echo_capacity`, every block handed to the speaker (silence included) is also
    copied into the `echo` ring: the far end for echo cancellation, exactly as played.
    The callbacks then also stamp `clock`: the PortAudio stream time at which sample 0
    of the capture stream was recorded and sample 0 of the playback stream is played
    (from each block's ADC/DAC time), which gives the loop's delay (`echo_delay_s`).

    `notes` are messages the endpoint leaves for the user (e.g. the stream layout it
    fell back to); the runtime publishes them once the endpoint has started.
    """

    def __init__(self, capture_capacity: int, playback_capacity: int, prebuffer: int, echo_capacity: int = 0,
                 capture_rate: int = 0, playback_rate: int = 0) -> None:
        self.capture = RingBuffer(capture_capacity)
        self.playback = RingBuffer(playback_capacity)
        self.echo = RingBuffer(echo_capacity) if echo_capacity else None
        self.clock = np.full(2, np.nan)  # [capture, playback] stream time of sample 0
        self._capture_period = 1.0 / capture_rate if capture_rate else 0.0
        self._playback_period = 1.0 / playback_rate if playback_rate else 0.0
        self.notes: list[str] = []
        self.prebuffer = int(prebuffer)
        self.playing = False
        # One counter per callback thread: separate streams run separate threads.
        self.input_xruns = 0
        self.output_xruns = 0
        # PortAudio raises status flags while a stream starts (priming, a first under/overflow):
        # they are not glitches of the conversation. Each direction counts from its first clean
        # callback on.
        self._input_running = False
        self._output_running = False
        self.error: BaseException | None = None

    @property
    def xruns(self) -> int:
        """PortAudio status flags (over/underflows) reported to the callbacks since the stream ran."""
        return self.input_xruns + self.output_xruns

    @property
    def underruns(self) -> int:
        """Output callbacks, after playback started, that found too little audio."""
        return self.playback.underruns

    def push_input(self, block: np.ndarray) -> None:
        self.capture.write(block)

    def set_rates(self, capture_rate: int, playback_rate: int) -> None:
        """The streams were reopened at other rates (before any audio reached the step thread)."""
        self._capture_period = 1.0 / capture_rate
        self._playback_period = 1.0 / playback_rate
        self.clock[:] = np.nan

    def echo_delay_s(self) -> float | None:
        """How much later a played sample shows up in the capture stream, by PortAudio's
        clock (None before both directions have run, or where it reports no times)."""
        capture, playback = self.clock
        if not (np.isfinite(capture) and np.isfinite(playback)):
            return None
        return float(playback - capture)

    def pull_output(self, out: np.ndarray) -> None:
        if not self.playing and self.playback.available < self.prebuffer:
            out.fill(0.0)
        else:
            self.playing = True
            self.playback.read(out)
        if self.echo is not None:
            self.echo.write(out)

    def _stamp_capture(self, adc_time: float) -> None:
        if adc_time > 0.0:  # 0: the host API reports no times
            self.clock[0] = adc_time - self.capture.written * self._capture_period

    def _stamp_playback(self, dac_time: float) -> None:
        if dac_time > 0.0:
            self.clock[1] = dac_time - self.echo.written * self._playback_period

    # PortAudio callbacks (sounddevice signatures). Mono: column 0 is the signal.

    def duplex_callback(self, indata, outdata, frames, time, status) -> None:
        try:
            self._capture_block(indata, time, status)
            self._play_block(outdata, time)
        except BaseException as exc:  # noqa: BLE001 - must not escape into PortAudio
            self._fail(exc, outdata)

    def input_callback(self, indata, frames, time, status) -> None:
        try:
            self._capture_block(indata, time, status)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc, None)

    def output_callback(self, outdata, frames, time, status) -> None:
        try:
            if not status:
                self._output_running = True
            elif self._output_running:
                self.output_xruns += 1
            self._play_block(outdata, time)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc, outdata)

    def _capture_block(self, indata, time, status) -> None:
        if not status:
            self._input_running = True
        elif self._input_running:
            self.input_xruns += 1
        if self.echo is not None:
            self._stamp_capture(time.inputBufferAdcTime)
        self.capture.write(indata[:, 0])

    def _play_block(self, outdata, time) -> None:
        if self.echo is not None:
            self._stamp_playback(time.outputBufferDacTime)
        self.pull_output(outdata[:, 0])

    def _fail(self, exc: BaseException, outdata) -> None:
        if self.error is None:
            self.error = exc
        if outdata is not None:
            outdata.fill(0.0)


class DuplexAudio:
    """Microphone and speaker as one real-time endpoint for `DuplexRuntime`.

    Opens one duplex `sounddevice.Stream` when input and output are the same device,
    otherwise an `InputStream` and an `OutputStream`. Without echo cancellation
    (`echo_reference=False`) the ALSA host API gets two streams even for one device:
    PortAudio 19.6's ALSA duplex polling has been seen to abort the stream at start-up
    when the device is PulseAudio's "pulse" plugin (`snd_pcm_delay` error in
    ContinuePoll, PortAudio issue #758), never with two streams. Echo cancellation wants
    one duplex stream everywhere (microphone and speaker on one clock), so with
    `echo_reference=True` a duplex stream is opened and `start` checks that it comes up:
    it tries `DUPLEX_ATTEMPTS` times at each of two rates, then falls back to two streams and says so in
    `buffers.notes` (the echo path then relies on its measured delay). `duplex`
    overrides the choice. Streams run mono float32 at the device's default rate (or
    `samplerate`), with blocks of `block_seconds` (one model frame by default, so each
    callback carries about one frame and playback needs only one block queued before it
    starts). The rings hold `capture_seconds` / `playback_seconds` of audio at device rate;
    the far-end ring (`echo_reference`) as much as the capture ring.
    """

    realtime = True
    DUPLEX_ATTEMPTS = 2
    MAX_RESTARTS = 3
    START_WAIT_S = 3.0  # PulseAudio's first callback was seen to take up to 2 s

    def __init__(
        self,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        *,
        samplerate: int | None = None,
        block_seconds: float = DEFAULT_BLOCK_SECONDS,
        capture_seconds: float = 10.0,
        playback_seconds: float = 2.0,
        duplex: bool | None = None,
        echo_reference: bool = False,
    ) -> None:
        self._sd = _sounddevice()
        self.input_device = resolve_device(input_device, "input")
        self.output_device = resolve_device(output_device, "output")
        shared = self.input_device.index == self.output_device.index
        if duplex and not shared:
            raise AudioError(
                f"one duplex stream needs the same input and output device, got {self.input_device.name!r} "
                f"and {self.output_device.name!r}"
            )
        if duplex is None:
            duplex = shared and (echo_reference or self.input_device.hostapi != "ALSA")
        self.duplex = duplex
        self._check_duplex = echo_reference and duplex
        # PulseAudio's ALSA plugin at PortAudio's default ("high", 160/240 ms) under-runs on a
        # busy machine and then grows its buffers: the loop delay wandered from 220 to 700 ms in
        # 12 s, and the echo canceller lost the echo at every step. Asked for 300 ms, the delay
        # held within ±15 ms (README, "Echo cancellation").
        self.latency = ECHO_LATENCY_S if echo_reference and self.input_device.hostapi == "ALSA" else None
        self.capture_rate = int(samplerate or self.input_device.default_samplerate)
        self.playback_rate = int(samplerate or (self.capture_rate if shared else self.output_device.default_samplerate))
        self._rates = (self.capture_rate, self.playback_rate)  # as first chosen
        self._rate_fixed = samplerate is not None
        self._block_seconds = block_seconds
        self._in_block = max(1, round(self.capture_rate * block_seconds))
        self._out_block = max(1, round(self.playback_rate * block_seconds))
        capture_capacity = max(self._in_block, round(self.capture_rate * capture_seconds))
        self.buffers = StreamBuffers(
            capture_capacity=capture_capacity,
            playback_capacity=max(2 * self._out_block, round(self.playback_rate * playback_seconds)),
            prebuffer=self._out_block,
            echo_capacity=max(self._out_block, round(self.playback_rate * capture_seconds)) if echo_reference else 0,
            capture_rate=self.capture_rate,
            playback_rate=self.playback_rate,
        )
        if echo_reference and not shared:
            self.buffers.notes.append(
                f"echo cancellation: input {self.input_device.name!r} and output {self.output_device.name!r} are different "
                f"devices ({self.capture_rate} / {self.playback_rate} Hz), so they run as two streams on two clocks; the echo "
                "delay is measured while the agent speaks. "
                "If the agent still hears itself, press h for the half-duplex gate."
            )
        self._streams: list = []
        try:
            self._streams = self._open(self.duplex)
        except AudioError as exc:
            if not self._check_duplex:
                raise
            self._fall_back(f"the device refused a duplex stream ({exc})")
        self._started = False
        self._closed = False
        self._restarts = 0

    def _open(self, duplex: bool) -> list:
        sd = self._sd
        common = dict(channels=1, dtype="float32", latency=self.latency)
        try:
            if duplex:
                return [
                    sd.Stream(device=(self.input_device.index, self.output_device.index), samplerate=self.capture_rate,
                              blocksize=self._in_block, callback=self.buffers.duplex_callback, **common)
                ]
            return [
                sd.InputStream(device=self.input_device.index, samplerate=self.capture_rate, blocksize=self._in_block,
                               callback=self.buffers.input_callback, **common),
                sd.OutputStream(device=self.output_device.index, samplerate=self.playback_rate, blocksize=self._out_block,
                                callback=self.buffers.output_callback, **common),
            ]
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioError(
                f"cannot open audio input {self.input_device.name!r} at {self.capture_rate} Hz / output "
                f"{self.output_device.name!r} at {self.playback_rate} Hz (mono float32): {exc}. "
                "Try another device or --samplerate."
            ) from exc

    def _fall_back(self, why: str) -> None:
        """Two streams instead of one duplex stream, and a note saying so."""
        self._close_streams()
        self.duplex = False
        self._check_duplex = False
        self._streams = self._open(False)
        self.buffers.notes.append(
            f"echo cancellation: {why}; using separate input and output streams with a measured echo delay instead. "
            "If the agent still hears itself, press h for the half-duplex gate."
        )

    def start(self) -> None:
        """Start the streams. A duplex stream for echo cancellation must deliver its first
        callbacks and stay up: it gets `DUPLEX_ATTEMPTS` tries at the device's rate and as many
        at 48 kHz (on ALSA 48 kHz first, see `_duplex_rates`), then two streams take over."""
        sd = self._sd
        try:
            if self._check_duplex:
                for rate in self._duplex_rates():
                    if self._try_duplex(rate):
                        self._started = True
                        return
                self._set_rate(self._rates[0])
                self._fall_back(f"the duplex stream did not come up at {' or '.join(f'{r} Hz' for r in self._duplex_rates())}")
            for stream in self._streams:
                stream.start()
        except sd.PortAudioError as exc:
            self.close()
            raise AudioError(f"cannot start audio on {self.input_device.name!r} / {self.output_device.name!r}: {exc}") from exc
        self._started = True

    def _duplex_rates(self) -> list[int]:
        first = self._rates[0]
        if self._rate_fixed or first == 48000:
            return [first]
        # ALSA: 48 kHz first. Through PulseAudio's plugin a duplex stream at 44.1 kHz died at
        # start-up 6 times out of 6, or came up and then under-ran 60 times in 14 s.
        return [48000, first] if self.input_device.hostapi == "ALSA" else [first, 48000]

    def _set_rate(self, rate: int) -> None:
        self.capture_rate = self.playback_rate = rate
        self._in_block = self._out_block = max(1, round(rate * self._block_seconds))
        self.buffers.prebuffer = self._out_block
        self.buffers.set_rates(rate, rate)

    def _try_duplex(self, rate: int) -> bool:
        for attempt in range(1, self.DUPLEX_ATTEMPTS + 1):
            if rate != self.capture_rate or attempt > 1 or not self._streams:
                self._close_streams()
                self._set_rate(rate)
                try:
                    self._streams = self._open(True)
                except AudioError:
                    return False
            self._streams[0].start()
            if self._came_up(self._streams[0]):
                if rate != self._rates[0] or attempt > 1:
                    self.buffers.notes.append(f"the duplex audio stream runs at {rate} Hz (came up at attempt {attempt})")
                return True
        self._close_streams()
        return False

    def _came_up(self, stream) -> bool:
        """True once the stream has delivered audio and is still running a moment later."""
        before = self.buffers.capture.written
        deadline = time.monotonic() + self.START_WAIT_S
        while time.monotonic() < deadline and stream.active:
            if self.buffers.capture.written > before:
                time.sleep(0.25)
                return bool(stream.active)
            time.sleep(0.02)
        return False

    def _close_streams(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.abort()
                stream.close()
            except self._sd.PortAudioError:
                pass

    def input_finished(self) -> bool:
        """A live microphone never runs out."""
        return False

    def check(self) -> None:
        """Raise `AudioError` if a callback failed or a started stream stopped by itself.

        With echo cancellation a stream that stops is first reopened, up to `MAX_RESTARTS`
        times: PortAudio's ALSA duplex polling also aborted running streams on a loaded
        machine (the same ContinuePoll error as at start-up). The rings carry on, so the
        recording stays aligned; the echo path measures the new loop delay by itself."""
        if self.buffers.error is not None:
            raise AudioError(f"the audio callback failed: {self.buffers.error!r}")
        if self._started and not self._closed and not all(s.active for s in self._streams):
            if self.buffers.echo is None or self._restarts >= self.MAX_RESTARTS:
                raise AudioError(
                    f"the audio stream on {self.input_device.name!r} / {self.output_device.name!r} stopped unexpectedly "
                    "(device disconnected?)"
                )
            self._restarts += 1
            self._restart()

    def _restart(self) -> None:
        sd = self._sd
        self._close_streams()
        try:
            if self.duplex and self._try_duplex(self.capture_rate):
                pass
            else:
                if self.duplex:
                    self._fall_back("the duplex stream stopped and did not come back")
                else:
                    self._streams = self._open(False)
                for stream in self._streams:
                    stream.start()
        except (sd.PortAudioError, AudioError) as exc:
            raise AudioError(f"the audio stream on {self.input_device.name!r} stopped and could not be reopened: {exc}") from exc
        self.buffers.notes.append(f"the audio stream stopped by itself and was reopened ({self._restarts} of {self.MAX_RESTARTS})")

    def close(self) -> None:
        """Stop and close the streams; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._close_streams()

    def __enter__(self) -> DuplexAudio:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
