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

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppchat.constants import FRAME_SECONDS
from ppchat.engine.ringbuffer import RingBuffer
from ppchat.errors import AudioError

DEFAULT_BLOCK_SECONDS = FRAME_SECONDS  # each callback delivers about one model frame
NO_DEVICE_HINT = (
    "Connect a microphone/speaker, pick another one with --input-device / --output-device "
    "(see `ppchat --list-devices`), or on a machine without a sound card start the virtual "
    "device with tools/virtual-audio.sh."
)


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
        raise AudioError(f"cannot list audio devices: {exc}. {NO_DEVICE_HINT}") from exc
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


def refresh_devices() -> None:
    """Re-initialise PortAudio so it sees devices that appeared after import.

    PortAudio enumerates devices once, at `import sounddevice`; a PulseAudio server
    started later (for example by tools/virtual-audio.sh) is invisible until this is
    called. No stream may be open while it runs.
    """
    sd = _sounddevice()
    # sounddevice has no public call for this; terminate + initialize is what its author advises.
    sd._terminate()
    sd._initialize()


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
        raise AudioError(f"no audio {kind} device found. {NO_DEVICE_HINT}")
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
    """

    def __init__(self, capture_capacity: int, playback_capacity: int, prebuffer: int) -> None:
        self.capture = RingBuffer(capture_capacity)
        self.playback = RingBuffer(playback_capacity)
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

    def pull_output(self, out: np.ndarray) -> None:
        if not self.playing:
            if self.playback.available < self.prebuffer:
                out.fill(0.0)
                return
            self.playing = True
        self.playback.read(out)

    # PortAudio callbacks (sounddevice signatures). Mono: column 0 is the signal.

    def duplex_callback(self, indata, outdata, frames, time, status) -> None:
        try:
            if not status:
                self._input_running = True
            elif self._input_running:
                self.input_xruns += 1
            self.capture.write(indata[:, 0])
            self.pull_output(outdata[:, 0])
        except BaseException as exc:  # noqa: BLE001 - must not escape into PortAudio
            self._fail(exc, outdata)

    def input_callback(self, indata, frames, time, status) -> None:
        try:
            if not status:
                self._input_running = True
            elif self._input_running:
                self.input_xruns += 1
            self.capture.write(indata[:, 0])
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc, None)

    def output_callback(self, outdata, frames, time, status) -> None:
        try:
            if not status:
                self._output_running = True
            elif self._output_running:
                self.output_xruns += 1
            self.pull_output(outdata[:, 0])
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc, outdata)

    def _fail(self, exc: BaseException, outdata) -> None:
        if self.error is None:
            self.error = exc
        if outdata is not None:
            outdata.fill(0.0)


class DuplexAudio:
    """Microphone and speaker as one real-time endpoint for `DuplexRuntime`.

    Opens one duplex `sounddevice.Stream` when input and output are the same device,
    otherwise an `InputStream` and an `OutputStream`. Exception: on the ALSA host API
    the default is two streams even for one device, because PortAudio 19.6's ALSA
    duplex polling aborts the stream at start-up when the device is PulseAudio's "pulse"
    plugin (`snd_pcm_delay` error in ContinuePoll, PortAudio issue #758; seen on the
    virtual device in about one start out of three, never with two streams). `duplex`
    overrides the choice. Streams run mono float32 at the
    device's default rate (or `samplerate`), with blocks of `block_seconds` (one model
    frame by default, so each callback carries about one frame and playback needs only
    one block queued before it starts). The rings hold `capture_seconds` /
    `playback_seconds` of audio at device rate.
    """

    realtime = True

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
    ) -> None:
        sd = _sounddevice()
        self.input_device = resolve_device(input_device, "input")
        self.output_device = resolve_device(output_device, "output")
        shared = self.input_device.index == self.output_device.index
        if duplex and not shared:
            raise AudioError(
                f"one duplex stream needs the same input and output device, got {self.input_device.name!r} "
                f"and {self.output_device.name!r}"
            )
        self.duplex = shared and self.input_device.hostapi != "ALSA" if duplex is None else duplex
        self.capture_rate = int(samplerate or self.input_device.default_samplerate)
        self.playback_rate = int(samplerate or (self.capture_rate if shared else self.output_device.default_samplerate))
        in_block = max(1, round(self.capture_rate * block_seconds))
        out_block = max(1, round(self.playback_rate * block_seconds))
        self.buffers = StreamBuffers(
            capture_capacity=max(in_block, round(self.capture_rate * capture_seconds)),
            playback_capacity=max(2 * out_block, round(self.playback_rate * playback_seconds)),
            prebuffer=out_block,
        )
        common = dict(channels=1, dtype="float32")
        try:
            if self.duplex:
                self._streams = [
                    sd.Stream(device=(self.input_device.index, self.output_device.index), samplerate=self.capture_rate,
                              blocksize=in_block, callback=self.buffers.duplex_callback, **common)
                ]
            else:
                self._streams = [
                    sd.InputStream(device=self.input_device.index, samplerate=self.capture_rate, blocksize=in_block,
                                   callback=self.buffers.input_callback, **common),
                    sd.OutputStream(device=self.output_device.index, samplerate=self.playback_rate, blocksize=out_block,
                                    callback=self.buffers.output_callback, **common),
                ]
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioError(
                f"cannot open audio input {self.input_device.name!r} at {self.capture_rate} Hz / output "
                f"{self.output_device.name!r} at {self.playback_rate} Hz (mono float32): {exc}. "
                "Try another device or --samplerate."
            ) from exc
        self._started = False
        self._closed = False

    def start(self) -> None:
        sd = _sounddevice()
        try:
            for stream in self._streams:
                stream.start()
        except sd.PortAudioError as exc:
            self.close()
            raise AudioError(f"cannot start audio on {self.input_device.name!r} / {self.output_device.name!r}: {exc}") from exc
        self._started = True

    def input_finished(self) -> bool:
        """A live microphone never runs out."""
        return False

    def check(self) -> None:
        """Raise `AudioError` if a callback failed or a started stream stopped by itself."""
        if self.buffers.error is not None:
            raise AudioError(f"the audio callback failed: {self.buffers.error!r}")
        if self._started and not self._closed and not all(s.active for s in self._streams):
            raise AudioError(
                f"the audio stream on {self.input_device.name!r} / {self.output_device.name!r} stopped unexpectedly "
                "(device disconnected?)"
            )

    def close(self) -> None:
        """Stop and close the streams; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.abort()
            stream.close()

    def __enter__(self) -> DuplexAudio:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
