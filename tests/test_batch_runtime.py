"""`BatchRuntime`: many conversations' lanes on one step thread, one batched frame for all (demo model, CPU).

Each lane is fed from an array (no sound card, no network): its events must be exactly what its
conversation run alone through `ModelPipeline` gives, whenever it joined and whoever else was in
the batch; lanes end on their own (input ended, stop, a failing endpoint) without the others."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ppchat.engine.batch import BatchPipeline
from ppchat.engine.batch_runtime import BatchLane, BatchRuntime
from ppchat.engine.events import EventBus, NoticeEvent, StepEvent
from ppchat.engine.pipeline import ModelPipeline
from ppchat.engine.virtual_io import ArrayAudio
from ppchat.errors import AudioError, PPChatError
from ppchat.models.loader import load_model
from ppchat.sampling import Sampling


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)


def _speech(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 24000
    return (0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.02 * rng.standard_normal(samples)).astype(np.float32)


def _lane(batch: BatchRuntime, audio, seed: int, prompt: str) -> tuple[BatchLane, object]:
    bus = EventBus()
    sub = bus.subscribe(maxlen=100_000)
    lane = BatchLane(batch, batch.condition(None, prompt, seed), audio, bus)
    return lane, sub


def _events(sub) -> tuple[list[StepEvent], list[NoticeEvent]]:
    events = sub.drain()
    return [e for e in events if isinstance(e, StepEvent)], [e for e in events if isinstance(e, NoticeEvent)]


def test_lanes_equal_their_conversations_run_alone(model):
    # name: (seed, role prompt, input samples: b's and c's end in a partial frame, zero-padded)
    plan = {"a": (5, "You are a pirate.", 1920 * 14), "b": (6, "You sell insurance.", 1920 * 6 + 700),
            "c": (5, "You are a pirate.", 1920 * 9 + 100)}  # a's seed and prompt, other audio: must not replay a
    pcm = {name: _speech(n, i) for i, (name, (_, _, n)) in enumerate(plan.items())}
    batch = BatchRuntime(lambda: BatchPipeline(model, 2, Sampling()), model.tokenizer.piece).start()
    try:
        lanes = {}
        for name in ("a", "b"):
            seed, prompt, _ = plan[name]
            lanes[name] = _lane(batch, ArrayAudio(pcm[name], 24000, realtime=False), seed, prompt)
            lanes[name][0].start()
        assert lanes["b"][0].join(60)
        seed, prompt, _ = plan["c"]  # takes the row b left, while a still runs
        lanes["c"] = _lane(batch, ArrayAudio(pcm["c"], 24000, realtime=False), seed, prompt)
        lanes["c"][0].start()
        assert all(lane.join(60) for lane, _ in lanes.values())
        assert batch.lanes == 0
    finally:
        batch.close()

    got = {}
    for name, (seed, prompt, n) in plan.items():
        steps, notices = _events(lanes[name][1])
        got[name] = steps
        frames = -(-n // 1920)
        assert [e.step for e in steps] == list(range(frames)), name
        assert [n.message for n in notices if n.level != "info" or "ended" in n.message] == [
            f"audio input ended after {frames} frames"]
        single = ModelPipeline(model, Sampling(seed=seed), phase_timing=False)
        single.start(None, prompt)
        padded = np.zeros(frames * 1920, dtype=np.float32)
        padded[:n] = pcm[name]
        for e in steps:
            want_pcm, want_token, _ = single.run_frame(padded[e.step * 1920:(e.step + 1) * 1920])
            np.testing.assert_array_equal(e.user_pcm, padded[e.step * 1920:(e.step + 1) * 1920])
            assert e.text_token == want_token, (name, e.step)
            np.testing.assert_allclose(e.agent_pcm, want_pcm, atol=1e-5, err_msg=f"{name}, step {e.step}")
            assert e.text_piece == model.tokenizer.piece(want_token) and e.timings_ms["total"] > 0
    # Different conversations said different things (the checks above cannot pass by all being alike).
    assert [e.text_token for e in got["a"][:6]] != [e.text_token for e in got["b"][:6]]


class _FailingAudio(ArrayAudio):
    def __init__(self, *args, fail_after: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fail_at = None
        self._fail_after = fail_after

    def check(self) -> None:
        self._fail_at = self._fail_at or time.monotonic() + self._fail_after
        if time.monotonic() > self._fail_at:
            raise AudioError("the test's device went away")


def test_a_full_batch_refuses_a_lane_and_a_failing_endpoint_ends_its_lane_alone(model):
    batch = BatchRuntime(lambda: BatchPipeline(model, 2, Sampling()), model.tokenizer.piece).start()
    try:
        long = _lane(batch, ArrayAudio(_speech(24000 * 30, 1), 24000), 1, "assistant")
        failing = _lane(batch, _FailingAudio(_speech(24000 * 30, 2), 24000, fail_after=1.0), 2, "assistant")
        long[0].start()
        failing[0].start()
        extra, _ = _lane(batch, ArrayAudio(_speech(24000, 3), 24000), 3, "assistant")
        with pytest.raises(PPChatError, match="all 2 conversations of this batch are taken"):
            extra.start()
        t0 = time.monotonic()
        extra.stop()
        assert time.monotonic() - t0 < 1.0 and not extra.running  # it never ran: nothing to wait for

        assert failing[0].join(30)
        steps, notices = _events(failing[1])
        assert steps and [n.message for n in notices if n.level == "error"] == ["the test's device went away"]
        assert isinstance(failing[0].error, AudioError)
        _events(long[1])
        time.sleep(0.6)
        assert long[0].running and len(_events(long[1])[0]) >= 3  # still stepping in real time after the other ended
        long[0].stop()
        assert not long[0].running and long[0].error is None and batch.lanes == 0
    finally:
        batch.close()


def test_a_conversation_with_a_recorded_voice_joins_while_another_talks(model, tmp_path):
    """An audio voice prompt is encoded on the batch's Mimi (its streaming state put aside and back)
    while another conversation is mid-stream: both still equal their conversations run alone."""
    import soundfile

    from ppchat.engine.runtime import RuntimePolicy
    from ppchat.models.voices import load_voice

    wav = tmp_path / "voice.wav"
    soundfile.write(wav, _speech(int(24000 * 1.3), 9), 24000, subtype="FLOAT")
    voice = load_voice(str(wav), None, expected_dim=model.lm.config.dim)
    assert voice.kind == "audio"
    batch = BatchRuntime(lambda: BatchPipeline(model, 2, Sampling()), model.tokenizer.piece).start()
    no_drops = RuntimePolicy(max_backlog_frames=10_000)  # every frame heard, so the reference can replay them all
    try:
        bus_a, bus_b = EventBus(), EventBus()
        sub_a, sub_b = bus_a.subscribe(maxlen=10_000), bus_b.subscribe(maxlen=10_000)
        talking = BatchLane(batch, batch.condition(None, "You are a pirate.", 31),
                            ArrayAudio(_speech(24000 * 3, 4), 24000, realtime=True), bus_a, no_drops)
        talking.start()
        time.sleep(0.8)
        joining = BatchLane(batch, batch.condition(voice, "You sell insurance.", 32),
                            ArrayAudio(_speech(1920 * 8, 5), 24000, realtime=False), bus_b, no_drops)
        joining.start()
        assert talking.join(60) and joining.join(60)
    finally:
        batch.close()
    steps = {"a": _events(sub_a)[0], "b": _events(sub_b)[0]}
    assert len(steps["a"]) >= 37 and len(steps["b"]) == 8
    assert steps["a"][0].wall_time < steps["b"][0].wall_time < steps["a"][-1].wall_time  # b joined mid-stream
    for name, seed, voice_prompt, prompt in (("a", 31, None, "You are a pirate."), ("b", 32, voice, "You sell insurance.")):
        single = ModelPipeline(model, Sampling(seed=seed), phase_timing=False)
        single.start(voice_prompt, prompt)
        for e in steps[name]:
            want_pcm, want_token, _ = single.run_frame(e.user_pcm)  # what the lane's model heard
            assert e.text_token == want_token, (name, e.step)
            np.testing.assert_allclose(e.agent_pcm, want_pcm, atol=1e-5, err_msg=f"{name}, step {e.step}")
