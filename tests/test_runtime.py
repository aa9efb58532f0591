"""The audio side of the engine without a sound card: ring buffer, resampling, device
selection errors, the PortAudio callbacks (allocation-free), and the step thread driven
by `ArrayAudio` (late frames, dropping, alignment, errors, mic policies)."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import numpy as np
import pytest

from ppchat.engine.audio_io import StreamBuffers, list_devices, resolve_device
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.resample import StreamResampler, resample
from ppchat.engine.ringbuffer import RingBuffer
from ppchat.engine.runtime import DuplexRuntime, FrameResult, RuntimePolicy
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.errors import AudioError

FRAME = 1920
RATE = 24000


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def sine(hz: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def frame_numbered(n_frames: int) -> np.ndarray:
    """Frame k holds the constant k+1, so any frame's identity survives the runtime."""
    return np.repeat(np.arange(1, n_frames + 1, dtype=np.float32) / 1000.0, FRAME)


def split_events(events):
    steps = [e for e in events if isinstance(e, StepEvent)]
    notices = [e for e in events if isinstance(e, NoticeEvent)]
    return steps, notices


class Passthrough:
    """Echoes its input; the text token is the call index."""

    frame_size = FRAME
    sample_rate = RATE

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.inputs: list[np.ndarray] = []

    def process(self, pcm):
        if self.delay:
            time.sleep(self.delay)
        self.inputs.append(pcm.copy())
        n = len(self.inputs) - 1
        return FrameResult(pcm=pcm, text_token=n, text_piece=f"t{n}", timings_ms={"encode": 0.5})


class Tone(Passthrough):
    """Ignores its input (but remembers it) and speaks a loud 700 Hz tone."""

    def process(self, pcm):
        super().process(pcm)
        return FrameResult(pcm=np.full(FRAME, 0.3, dtype=np.float32))


def run_to_end(processor, audio, policy=None, mark_first=False):
    bus = EventBus()
    sub = bus.subscribe(maxlen=10_000)
    runtime = DuplexRuntime(processor, audio, bus, policy)
    if mark_first:
        runtime.mark()
    runtime.start()
    assert runtime.join(timeout=60), "runtime did not finish"
    steps, notices = split_events(sub.drain())
    return runtime, steps, notices


# -- ring buffer -------------------------------------------------------------------------


def test_ring_wraparound_keeps_order():
    ring = RingBuffer(10)
    data = np.arange(100, dtype=np.float32)
    out = np.empty(8, dtype=np.float32)
    assert ring.write(data[:7]) == 7
    assert ring.read(out[:5]) == 5 and list(out[:5]) == [0, 1, 2, 3, 4]
    assert ring.write(data[7:13]) == 6  # crosses the end of the storage
    assert ring.available == 8 and ring.free == 2
    assert ring.read(out) == 8
    np.testing.assert_array_equal(out, data[5:13])
    assert ring.overruns == 0 and ring.underruns == 0


def test_ring_overrun_keeps_what_fits_and_counts():
    ring = RingBuffer(8)
    assert ring.write(np.ones(5, np.float32)) == 5
    assert ring.write(np.full(5, 2.0, np.float32)) == 3
    assert ring.write(np.full(1, 3.0, np.float32)) == 0
    assert ring.overruns == 2 and ring.dropped_samples == 3
    out = np.empty(8, np.float32)
    ring.read(out)
    np.testing.assert_array_equal(out, [1, 1, 1, 1, 1, 2, 2, 2])


def test_ring_underrun_zero_fills_and_counts():
    ring = RingBuffer(8)
    ring.write(np.full(3, 7.0, np.float32))
    out = np.full(5, -1.0, np.float32)
    assert ring.read(out) == 3
    np.testing.assert_array_equal(out, [7, 7, 7, 0, 0])
    assert ring.underruns == 1
    assert ring.read(out) == 0 and ring.underruns == 2 and not out.any()


def test_ring_spsc_threads_lose_nothing():
    """A producer thread and a consumer thread stream a counting sequence through a small ring."""
    total, ring = 200_000, RingBuffer(1000)
    source = np.arange(total, dtype=np.float32)
    received = np.empty(total, dtype=np.float32)

    def produce():
        pos, sizes = 0, [1, 37, 256, 999, 5]
        i = 0
        while pos < total:
            n = min(sizes[i % len(sizes)], total - pos)
            if ring.free >= n:
                ring.write(source[pos : pos + n])
                pos += n
                i += 1

    producer = threading.Thread(target=produce)
    producer.start()
    pos = 0
    while pos < total:
        n = min(ring.available, 313, total - pos)
        if n:
            ring.read(received[pos : pos + n])
            pos += n
    producer.join()
    np.testing.assert_array_equal(received, source)
    assert ring.overruns == 0 and ring.underruns == 0


# -- resampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate_in,rate_out", [(24000, 44100), (48000, 24000), (24000, 24000)])
def test_resample_whole_array_keeps_frequency_and_length(rate_in, rate_out):
    y = resample(sine(700, 1.0, rate_in), rate_in, rate_out)
    assert y.dtype == np.float32
    assert abs(len(y) - rate_out) <= 1
    assert abs(peak_hz(y, rate_out) - 700) <= 2


@pytest.mark.parametrize("rate_in,rate_out", [(44100, 24000), (24000, 48000), (24000, 24000)])
def test_stream_resampler_chunks_add_up_to_the_whole(rate_in, rate_out):
    x = sine(700, 1.0, rate_in)
    stream = StreamResampler(rate_in, rate_out)
    chunk = round(rate_in * 0.08)
    parts = [stream.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    parts.append(stream.process(x[:0], last=True))
    y = np.concatenate(parts)
    assert len(y) == rate_out  # 1 s in, 1 s out, once flushed
    assert abs(peak_hz(y, rate_out) - 700) <= 2
    # Streaming is the same filter as the one-shot conversion.
    np.testing.assert_allclose(y, resample(x, rate_in, rate_out), atol=1e-3)


# -- device selection --------------------------------------------------------------------

FAKE_DEVICES = [
    {"name": "Built-in Microphone", "index": 0, "hostapi": 0, "max_input_channels": 2, "max_output_channels": 0,
     "default_samplerate": 48000.0},
    {"name": "Built-in Output", "index": 1, "hostapi": 0, "max_input_channels": 0, "max_output_channels": 2, "default_samplerate": 48000.0},
    {"name": "USB Headset", "index": 2, "hostapi": 0, "max_input_channels": 1, "max_output_channels": 2, "default_samplerate": 44100.0},
]


@pytest.fixture
def sd_fake(monkeypatch):
    sd = pytest.importorskip("sounddevice")
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: FAKE_DEVICES)
    monkeypatch.setattr(sd, "query_hostapis", lambda *a, **k: [{"name": "CoreAudio"}])
    monkeypatch.setattr(sd.default, "device", (0, 1))
    return sd


def test_list_devices_is_structured(sd_fake):
    devices = list_devices()
    assert [d.name for d in devices] == [d["name"] for d in FAKE_DEVICES]
    assert devices[0].is_default_input and devices[1].is_default_output
    assert devices[2].hostapi == "CoreAudio" and devices[2].default_samplerate == 44100.0
    assert "USB Headset" in devices[2].describe()


def test_resolve_device_by_index_name_and_default(sd_fake):
    assert resolve_device(2, "input").name == "USB Headset"
    assert resolve_device("2", "output").name == "USB Headset"
    assert resolve_device("usb", "input").index == 2
    assert resolve_device("BUILT-IN", "input").index == 0  # only one built-in device has inputs
    assert resolve_device(None, "input").index == 0
    assert resolve_device(None, "output").index == 1


def test_resolve_device_errors_list_the_alternatives(sd_fake):
    with pytest.raises(AudioError, match="no audio input device matches 'speakers'") as info:
        resolve_device("speakers", "input")
    assert "Built-in Microphone" in str(info.value) and "USB Headset" in str(info.value)
    assert "Built-in Output" not in str(info.value)  # not an input device
    with pytest.raises(AudioError, match="#1 does not exist or has no input channels"):
        resolve_device(1, "input")
    with pytest.raises(AudioError, match="ambiguous"):
        resolve_device("b", "output")  # Built-in Output, USB Headset


def test_resolve_device_with_no_devices(monkeypatch):
    sd = pytest.importorskip("sounddevice")
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [])
    with pytest.raises(AudioError, match="no audio input device found.*virtual-audio.sh"):
        resolve_device(None, "input")
    with pytest.raises(AudioError, match="no audio output device found"):
        resolve_device("anything", "output")


def test_resolve_device_when_portaudio_fails(monkeypatch):
    sd = pytest.importorskip("sounddevice")

    def broken(*args, **kwargs):
        raise sd.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sd, "query_devices", broken)
    with pytest.raises(AudioError, match="cannot list audio devices: Error querying device"):
        resolve_device(None, "output")


# -- the PortAudio callbacks ----------------------------------------------------------------

BLOCK = 4096  # a temporary copy of one block would be 16 KiB; the threshold below is 4 KiB
LIMIT = 4096


def callback_driver(buffers: StreamBuffers, callback):
    """Drives `callback` through every path: wrap-around, overrun, underrun, xrun flags."""
    sd = pytest.importorskip("sounddevice")
    indata = np.random.default_rng(0).standard_normal((BLOCK, 1)).astype(np.float32)
    outdata = np.zeros((BLOCK, 1), np.float32)
    feed = np.ones(BLOCK, np.float32)
    sink = np.zeros(BLOCK, np.float32)
    flags = (sd.CallbackFlags(0), sd.CallbackFlags(0), sd.CallbackFlags(2))  # 2 = input overflow

    def one_round(i: int) -> None:
        if i % 4:
            buffers.playback.write(feed)  # the step thread keeps up 3 times out of 4
        if i % 5 == 0:
            buffers.capture.read(sink)  # and reads the capture ring now and then
        callback(indata, outdata, BLOCK, None, flags[i % 3])

    return one_round


def measure_allocations(buffers: StreamBuffers, callback, rounds: int = 3000) -> tuple[int, int]:
    """(peak bytes above the start, net bytes retained) over `rounds` callbacks."""
    one_round = callback_driver(buffers, callback)
    for i in range(60):  # warm-up: every code path has run once
        one_round(i)
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(rounds):
            one_round(i)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    return peak - start, end - start


def make_buffers() -> StreamBuffers:
    return StreamBuffers(capture_capacity=5 * BLOCK + 17, playback_capacity=3 * BLOCK + 5, prebuffer=BLOCK)


def test_duplex_callback_does_not_allocate():
    buffers = make_buffers()
    peak, retained = measure_allocations(buffers, buffers.duplex_callback)
    # Only fixed-size views and ints come and go (a copy of one block would be 16 KiB), and
    # what stays is the counters' current int objects: a leak of even one small object
    # per call would retain 3000 of them.
    assert peak < LIMIT, f"callback peak allocation {peak} B"
    assert retained < LIMIT, f"callback retained {retained} B"
    # ...and the driver really exercised every path.
    assert buffers.capture.overruns > 0 and buffers.underruns > 0 and buffers.xruns > 0
    assert buffers.error is None


def test_split_callbacks_do_not_allocate():
    buffers = make_buffers()

    def both(indata, outdata, frames, time, status):
        buffers.input_callback(indata, frames, time, status)
        buffers.output_callback(outdata, frames, time, status)

    peak, retained = measure_allocations(buffers, both)
    assert peak < LIMIT and retained < LIMIT, (peak, retained)
    assert buffers.input_xruns > 0 and buffers.output_xruns > 0


def test_allocation_check_catches_a_temporary():
    """The measurement above can fail: a callback that makes one temporary copy is caught."""
    buffers = make_buffers()

    def wasteful(indata, outdata, frames, time, status):
        buffers.capture.write(indata[:, 0] * 1.0)
        buffers.pull_output(outdata[:, 0])

    peak, _ = measure_allocations(buffers, wasteful, rounds=50)
    assert peak >= 4 * BLOCK


def test_callback_plays_after_prebuffer_and_counts_underruns():
    buffers = StreamBuffers(capture_capacity=100, playback_capacity=100, prebuffer=8)
    indata = np.arange(4, dtype=np.float32).reshape(4, 1)
    out = np.full((4, 1), 9.0, np.float32)
    buffers.playback.write(np.arange(1, 6, dtype=np.float32))
    buffers.duplex_callback(indata, out, 4, None, 0)
    assert not out.any() and buffers.underruns == 0  # start-up silence: not an underrun
    buffers.playback.write(np.arange(6, 9, dtype=np.float32))  # now 8 queued: playback starts
    buffers.duplex_callback(indata, out, 4, None, 0)
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 4])
    buffers.duplex_callback(indata, out, 4, None, 0)
    buffers.duplex_callback(indata, out, 4, None, 0)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0])
    assert buffers.underruns == 1
    assert buffers.capture.available == 16  # every input block was kept


def test_callback_error_is_recorded_not_raised():
    buffers = make_buffers()
    out = np.ones((BLOCK, 1), np.float32)
    buffers.duplex_callback(np.zeros(BLOCK, np.float32), out, BLOCK, None, 0)  # 1-D: indexing fails
    assert isinstance(buffers.error, IndexError)
    assert not out.any()  # the speaker gets silence, not garbage


# -- the step thread ----------------------------------------------------------------------


def test_offline_run_processes_every_frame_in_order():
    x = frame_numbered(10)
    x = np.concatenate([x, np.full(FRAME // 2, 0.5, np.float32)])  # and a half frame
    proc = Passthrough()
    audio = ArrayAudio(x, RATE, realtime=False)
    runtime, steps, notices = run_to_end(proc, audio, mark_first=True)
    assert runtime.error is None
    assert [n.level for n in notices] == ["info"]
    assert [e.step for e in steps] == list(range(11))
    np.testing.assert_allclose([e.audio_time for e in steps], np.arange(11) * 0.08)
    user = np.concatenate([e.user_pcm for e in steps])
    np.testing.assert_array_equal(user[: len(x)], x)
    assert not user[len(x) :].any()  # the last frame is zero-padded
    np.testing.assert_array_equal(np.concatenate([e.agent_pcm for e in steps]), user)
    np.testing.assert_array_equal(audio.played(), user)
    # Not real time: a huge backlog, but nothing dropped.
    assert max(e.queue_in for e in steps) > 3 and sum(e.dropped_in for e in steps) == 0
    assert [e.text_token for e in steps] == list(range(11)) and steps[4].text_piece == "t4"
    assert all(set(e.timings_ms) == {"encode", "total"} for e in steps)
    assert [e.marked for e in steps] == [True] + [False] * 10
    assert steps[3].in_rms == pytest.approx(0.004) and steps[3].in_peak == pytest.approx(0.004)


def test_device_rate_is_converted_both_ways():
    rate = 48000
    x = sine(700, 1.0, rate)
    audio = ArrayAudio(x, rate, realtime=False)
    proc = Passthrough()
    _, steps, _ = run_to_end(proc, audio)
    assert len(steps) == 13  # 1 s at 24 kHz = 12.5 frames
    user = np.concatenate([e.user_pcm for e in steps])[:RATE]
    assert abs(peak_hz(user, RATE) - 700) <= 2
    assert np.sqrt(np.mean(user[2000:-2000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    played = audio.played()
    assert abs(len(played) - 13 * FRAME * 2) <= 2
    assert abs(peak_hz(played[:rate], rate) - 700) <= 2


def test_slow_processor_drops_input_but_keeps_tracks_aligned():
    n_frames = 25  # 2 s of live input
    x = frame_numbered(n_frames)
    proc = Passthrough(delay=0.2)  # 2.5x slower than real time
    audio = ArrayAudio(x, RATE, realtime=True)
    policy = RuntimePolicy(max_backlog_frames=3)
    runtime, steps, notices = run_to_end(proc, audio, policy)
    assert runtime.error is None and [n.level for n in notices] == ["info"]

    # Every input frame appears exactly once, in order, in the user track.
    assert [e.step for e in steps] == list(range(n_frames))
    np.testing.assert_array_equal(np.concatenate([e.user_pcm for e in steps]), x)

    processed = [e for e in steps if e.filled is None]
    dropped = [e for e in steps if e.filled == "agent"]
    assert len(processed) + len(dropped) == n_frames
    assert len(proc.inputs) == len(processed)
    assert dropped and sum(e.dropped_in for e in steps) == len(dropped)
    for e in dropped:
        assert not e.agent_pcm.any() and e.timings_ms == {} and e.text_token is None
    # The model heard exactly the processed frames; after each batch of dropped frames
    # comes the step that reports them.
    np.testing.assert_array_equal(np.concatenate(proc.inputs), np.concatenate([e.user_pcm for e in processed]))
    for i, e in enumerate(steps):
        if e.dropped_in:
            assert all(s.filled == "agent" for s in steps[i - e.dropped_in : i])
    assert all(e.late for e in processed) and not any(e.late for e in dropped)
    assert max(e.queue_in for e in steps) <= policy.max_backlog_frames
    assert sum(e.underruns for e in steps) > 0  # the speaker starved between slow steps
    assert sum(e.xruns for e in steps) == 0


def test_processor_exception_publishes_error_and_stops_cleanly(caplog):
    class Failing(Passthrough):
        def process(self, pcm):
            if len(self.inputs) == 3:
                raise RuntimeError("GPU fell off")
            return super().process(pcm)

    class CountingAudio(ArrayAudio):
        closes = 0

        def close(self):
            self.closes += 1
            super().close()

    audio = CountingAudio(frame_numbered(50), RATE, realtime=True)
    runtime, steps, notices = run_to_end(Failing(), audio)
    assert [e.step for e in steps] == [0, 1, 2]
    assert [n.level for n in notices] == ["error"]
    assert "model step 3 failed: RuntimeError: GPU fell off" in notices[0].message
    assert isinstance(runtime.error, RuntimeError)
    assert audio.closes >= 1 and not runtime.running
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is runtime.error]
    assert logged and logged[0].getMessage() == "model step 3 failed"  # with its traceback, for the log file



def test_a_processor_error_meant_for_the_user_is_shown_as_it_is():
    """`talk --server`: the server's 0x05 ('the server is shutting down; ...') reaches the runtime as
    a PPChatError from the remote model; it read 'model step 83 failed: PPChatError: ...'."""
    from ppchat.errors import PPChatError

    class Remote(Passthrough):
        def process(self, pcm):
            if len(self.inputs) == 2:
                raise PPChatError("ws://127.0.0.1:9/api/chat: the server is shutting down")
            return super().process(pcm)

    _, steps, notices = run_to_end(Remote(), ArrayAudio(frame_numbered(10), RATE, realtime=False))
    assert len(steps) == 2
    assert [n.message for n in notices if n.level == "error"] == ["ws://127.0.0.1:9/api/chat: the server is shutting down"]

def test_wrong_output_length_is_an_error():
    class Short(Passthrough):
        def process(self, pcm):
            return FrameResult(pcm=pcm[:100])

    runtime, steps, notices = run_to_end(Short(), ArrayAudio(frame_numbered(3), RATE, realtime=False))
    assert steps == [] and [n.level for n in notices] == ["error"]
    assert "returned 100 samples, expected 1920" in notices[0].message


def test_failed_audio_callback_stops_the_runtime(caplog):
    audio = ArrayAudio(frame_numbered(3), RATE, realtime=False)
    audio.buffers.error = OSError("device unplugged")
    runtime, steps, notices = run_to_end(Passthrough(), audio)
    assert [n.level for n in notices] == ["error"] and "device unplugged" in notices[0].message
    assert isinstance(runtime.error, AudioError)
    assert any(r.exc_info and r.exc_info[1] is runtime.error for r in caplog.records)


def test_half_duplex_gate_silences_the_mic_while_the_agent_speaks():
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 6 * FRAME).astype(np.float32)
    proc = Tone()
    _, steps, _ = run_to_end(proc, ArrayAudio(x, RATE, realtime=False), RuntimePolicy(half_duplex_gate=True, gate_threshold_rms=0.1))
    # Frame 0 is heard (the agent has not spoken yet); then the agent's 0.3 RMS closes the gate.
    np.testing.assert_array_equal(proc.inputs[0], x[:FRAME])
    assert steps[0].filled is None
    assert all(not p.any() for p in proc.inputs[1:])
    assert [e.filled for e in steps[1:]] == ["user"] * 5 and steps[1].in_rms == 0.0


def test_half_duplex_gate_stays_open_for_a_quiet_agent():
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 4 * FRAME).astype(np.float32)
    proc = Passthrough()  # output RMS ~0.29
    _, steps, _ = run_to_end(proc, ArrayAudio(x * 0.01, RATE, realtime=False), RuntimePolicy(half_duplex_gate=True, gate_threshold_rms=0.1))
    np.testing.assert_array_equal(np.concatenate(proc.inputs), x * 0.01)
    assert all(e.filled is None for e in steps)


def test_mute_feeds_silence():
    x = frame_numbered(4)
    proc = Passthrough()
    bus = EventBus()
    sub = bus.subscribe()
    runtime = DuplexRuntime(proc, ArrayAudio(x, RATE, realtime=False), bus)
    runtime.muted = True
    runtime.start()
    assert runtime.join(timeout=30)
    steps, _ = split_events(sub.drain())
    assert len(steps) == 4 and all(e.filled == "user" and not e.user_pcm.any() for e in steps)
    assert all(not p.any() for p in proc.inputs)


def test_context_manager_stops_a_live_runtime():
    audio = ArrayAudio(frame_numbered(500), RATE, realtime=True)  # 40 s: never ends by itself
    bus = EventBus()
    sub = bus.subscribe()
    with DuplexRuntime(Passthrough(), audio, bus) as runtime:
        first = sub.get(timeout=10)
        assert isinstance(first, StepEvent) and first.step == 0
    assert not runtime.running and runtime.error is None
    assert audio._clock is not None and not audio._clock.is_alive()


def test_ring_overflow_is_reported():
    audio = ArrayAudio(frame_numbered(2), RATE, realtime=False)
    ring = audio.buffers.playback
    ring.write(np.zeros(ring.capacity + 10, np.float32))  # as if the speaker had stalled
    _, steps, notices = run_to_end(Passthrough(), audio)
    warnings = [n.message for n in notices if n.level == "warning"]
    assert any("speaker buffer overflowed" in m for m in warnings), notices
    assert len(steps) == 2


def test_the_processor_hears_on_its_own_thread_that_the_step_thread_ends():
    """ModelPipeline destroys its MLX streams there: on any other thread that would not touch the
    streams the step thread made (and leaving them to the exit aborts it now and then)."""

    class Recording(Passthrough):
        def __init__(self):
            super().__init__()
            self.process_threads: set[int] = set()
            self.ended_on: list[int] = []

        def process(self, pcm):
            self.process_threads.add(threading.get_ident())
            return super().process(pcm)

        def thread_ended(self):
            self.ended_on.append(threading.get_ident())

    processor = Recording()
    run_to_end(processor, ArrayAudio(np.zeros(FRAME * 4, dtype=np.float32), RATE, realtime=False))
    assert len(processor.process_threads) == 1 and processor.ended_on == list(processor.process_threads)

