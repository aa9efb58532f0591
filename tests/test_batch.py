"""A batch of conversations equals the same conversations run one by one, token for token.

Each conversation has its own voice (a `.pt`-style embedding prompt, recorded voice codes, or none),
its own role prompt, seed and user audio codes, and joins the batch at its own step; one leaves and
another takes its row. The reference for every conversation is an independent `LMGen` run alone
(batch size 1) on the same inputs. Sampling is not greedy (and top-k below the vocabulary), so a row
that drew with another row's key, read another row's KV cache or position, or was fed another row's
tokens would diverge at once. The tiny LM's context (40) is shorter than the runs, so the per-row
rings wrap.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from ppchat.models.batch import BatchLMGen
from ppchat.models.generator import LMGen, VoiceEmbeddings
from ppchat.models.lm import LM, LMConfig
from ppchat.models.sampling import SamplingParams
from tests.conftest import fixture_params

TEXT = SamplingParams(0.7, 25)
AUDIO = SamplingParams(0.8, 20)


def load_lm(lm_dir: Path) -> tuple[LM, dict]:
    config = json.loads((lm_dir / "config.json").read_text())
    lm = LM(LMConfig.from_reference(config["lm_kwargs"]), dtype=mx.float32, depformer_steps=8)
    lm.load_reference_weights(mx.load(str(lm_dir / "weights.safetensors")))
    return lm, config


def prepared(lm: LM, config: dict, seed: int, voice, prompt: list[int]) -> LMGen:
    gen = LMGen(lm, text_sampling=TEXT, audio_sampling=AUDIO, depformer_steps=8, seed=seed,
                silence_tokens=config["silence_tokens"], sine_tokens=config["sine_tokens"],
                text_pad=config["zero_text_code"])
    gen.run_system_prompts(voice=voice, text_tokens=prompt, silence_frames=2)
    return gen


def alone(gen: LMGen, user: np.ndarray) -> list[list[int]]:
    out = []
    for codes in user:
        live = gen.step_live(mx.array(codes.astype(np.int32)))
        mx.eval(live.agent_codes, live.arrays)
        out.append(live.result().tokens.tolist())
    return out


@pytest.mark.parametrize("lm_dir", fixture_params("lm"))
def test_batch_equals_conversations_run_alone(lm_dir: Path) -> None:
    lm, config = load_lm(lm_dir)
    c = lm.config
    rng = np.random.default_rng(5)
    embedded = VoiceEmbeddings(rng.standard_normal((6, c.dim)).astype(np.float32),
                               rng.integers(0, c.card, size=(c.num_codebooks, c.max_delay + 3)))
    recorded = rng.integers(0, c.card, size=(c.n_q // 2, 5))
    prompt = config["text_prompt_tokens"]
    # name: (seed, voice, role prompt, step it joins at, step it leaves at)
    plan = {
        "a": (11, embedded, prompt, 0, 9),
        "b": (12, recorded, prompt[:3], 2, 40),
        "c": (13, None, prompt[2:], 5, 40),
        "d": (11, recorded, [], 9, 40),  # a's seed, a's freed row, another voice: must not replay a
    }
    steps = 40
    user = {name: rng.integers(0, c.card, size=(steps, c.n_q // 2)) for name in plan}

    expected = {}
    for name, (seed, voice, text, start, stop) in plan.items():
        expected[name] = alone(prepared(lm, config, seed, voice, text), user[name][: stop - start])

    batch = BatchLMGen(lm, 3, text_sampling=TEXT, audio_sampling=AUDIO, depformer_steps=8)
    got = {name: [] for name in plan}
    rows: dict[str, int] = {}
    for step in range(steps):
        for name, (*_, stop) in plan.items():
            if step == stop:
                batch.leave(rows.pop(name))
        for name, (seed, voice, text, start, _) in plan.items():
            if step == start:
                rows[name] = batch.join(prepared(lm, config, seed, voice, text))
        codes = np.zeros((3, c.n_q // 2), dtype=np.int32)
        for name, row in rows.items():
            codes[row] = user[name][step - plan[name][3]]
        live = batch.step_live(mx.array(codes))
        mx.eval(live.agent_codes, live.arrays)
        agent = np.array(live.agent_codes)
        outputs = live.result()
        assert sorted(outputs) == sorted(rows.values())
        for name, row in rows.items():
            got[name].append(outputs[row].tokens.tolist())
            assert agent[row].tolist() == outputs[row].agent_codes.tolist()

    assert rows["d"] == 0, "d takes the row a left"
    for name in plan:
        assert len(got[name]) == len(expected[name])
        for frame, (mine, theirs) in enumerate(zip(got[name], expected[name])):
            assert mine == theirs, f"conversation {name}, live frame {frame}"
    # The conversations really differ (so equality above is not one sequence matched four times).
    assert len({str(expected[name][:9]) for name in plan}) == len(plan)


@pytest.mark.parametrize("lm_dir", fixture_params("lm"))
def test_join_refuses_what_the_batch_cannot_run(lm_dir: Path) -> None:
    lm, config = load_lm(lm_dir)
    batch = BatchLMGen(lm, 1, text_sampling=TEXT, audio_sampling=AUDIO, depformer_steps=8)
    with pytest.raises(ValueError, match="own seed"):
        unseeded = LMGen(lm, text_sampling=TEXT, audio_sampling=AUDIO, depformer_steps=8,
                         silence_tokens=config["silence_tokens"], sine_tokens=config["sine_tokens"])
        unseeded.run_system_prompts(text_tokens=[5], silence_frames=2)
        batch.join(unseeded)
    with pytest.raises(ValueError, match="sampling settings"):
        batch.join(prepared_with(lm, config, SamplingParams(0.0, 0)))
    with pytest.raises(ValueError, match="prompt calls"):
        batch.join(LMGen(lm, text_sampling=TEXT, audio_sampling=AUDIO, depformer_steps=8, seed=1,
                         silence_tokens=config["silence_tokens"], sine_tokens=config["sine_tokens"]))
    row = batch.join(prepared(lm, config, 1, None, [5]))
    with pytest.raises(RuntimeError, match="one must leave"):
        batch.join(prepared(lm, config, 2, None, [5]))
    batch.leave(row)
    with pytest.raises(ValueError, match="holds no conversation"):
        batch.leave(row)


def prepared_with(lm: LM, config: dict, text: SamplingParams) -> LMGen:
    gen = LMGen(lm, text_sampling=text, audio_sampling=AUDIO, depformer_steps=8, seed=3,
                silence_tokens=config["silence_tokens"], sine_tokens=config["sine_tokens"],
                text_pad=config["zero_text_code"])
    gen.run_system_prompts(text_tokens=[5], silence_frames=2)
    return gen


@pytest.mark.parametrize("mimi_dir", fixture_params("mimi"))
def test_mimi_rows_started_at_different_times_equal_streams_run_alone(mimi_dir: Path) -> None:
    """A batched Mimi stream per conversation: a row restarted mid-run (`reset_row`) encodes and
    decodes exactly what a fresh one-row Mimi does with the same frames; the other rows go on."""
    from ppchat.models.mimi import Mimi, MimiConfig

    mimi = Mimi(MimiConfig.from_reference(json.loads((mimi_dir / "config.json").read_text())))
    mimi.load_reference_weights(mx.load(str(mimi_dir / "weights.safetensors")))
    fs, frames = mimi.frame_size, 12
    rng = np.random.default_rng(2)
    pcm = (0.3 * rng.standard_normal((3, frames, fs))).astype(np.float32)
    codes_in = rng.integers(0, 2 ** 31, size=(3, frames, mimi.num_codebooks)) % mimi.config.quantizer.bins
    starts = [0, 3, 7]  # row r's stream starts at frame starts[r] (row 1 restarts over a running stream)

    def alone(row: int) -> tuple[np.ndarray, np.ndarray]:
        mimi.reset(1)
        codes, audio = [], []
        for f in range(starts[row], frames):
            codes.append(np.array(mimi.encode_step(mx.array(pcm[row, f]).reshape(1, 1, -1))))
            audio.append(np.array(mimi.decode_step(mx.array(codes_in[row, f]).reshape(1, -1, 1))))
        return np.concatenate(codes, axis=-1)[0], np.concatenate(audio, axis=-1)[0, 0]

    want = [alone(row) for row in range(3)]
    mimi.reset(3)
    got_codes, got_audio = [[] for _ in range(3)], [[] for _ in range(3)]
    for f in range(frames):
        for row in range(3):
            if f == starts[row] and f > 0:
                mimi.reset_row(row)
        codes = mimi.encode_step(mx.array(pcm[:, f]).reshape(3, 1, -1))
        audio = mimi.decode_step(mx.array(codes_in[:, f].astype(np.int32)).reshape(3, -1, 1))
        for row in range(3):
            if f >= starts[row]:
                got_codes[row].append(np.array(codes[row]))
                got_audio[row].append(np.array(audio[row, 0]))
    for row in range(3):
        np.testing.assert_array_equal(np.concatenate(got_codes[row], axis=-1), want[row][0], err_msg=f"row {row}")
        np.testing.assert_allclose(np.concatenate(got_audio[row]), want[row][1], atol=1e-5, err_msg=f"row {row}")


def test_batch_pipeline_rows_equal_single_conversation_pipelines(tmp_path_factory) -> None:
    """End to end on the demo model: Mimi encode → LM → Mimi decode of a batched frame gives each
    conversation the text and audio its own `ModelPipeline` gives it, joined at different frames."""
    from ppchat.engine.batch import BatchPipeline
    from ppchat.engine.bench import _input_frames, _voice_prompt
    from ppchat.engine.pipeline import ModelPipeline
    from ppchat.models.loader import load_model
    from ppchat.sampling import Sampling

    model = load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)
    audio = _input_frames(model.mimi.frame_size, model.mimi.sample_rate, 12, 4)
    plan = {"x": (21, "assistant", 0), "y": (22, "You are a pirate. Answer briefly.", 3)}  # seed, prompt, join
    frames = 9
    voices = {name: _voice_prompt(model.lm, 5, seed) for name, (seed, _, _) in plan.items()}

    expected = {}
    for name, (seed, prompt, start) in plan.items():
        single = ModelPipeline(model, Sampling(seed=seed), phase_timing=False)
        single.start(voices[name], prompt)
        expected[name] = [single.run_frame(audio[f]) for f in range(start, frames)]

    batch = BatchPipeline(model, 2, Sampling())
    rows, got = {}, {name: [] for name in plan}
    for f in range(frames):
        for name, (seed, prompt, start) in plan.items():
            if f == start:
                rows[name] = batch.join(voices[name], prompt, seed=seed)
        out, ms = batch.run_frame({row: audio[f] for row in rows.values()})
        assert ms > 0 and sorted(out) == sorted(rows.values())
        for name, row in rows.items():
            got[name].append(out[row])
    for name in plan:
        assert len(got[name]) == len(expected[name])
        for f, (mine, (pcm, token, _)) in enumerate(zip(got[name], expected[name])):
            assert mine.text_token == token, f"{name}, frame {f}"
            np.testing.assert_allclose(mine.pcm, pcm, atol=1e-5, err_msg=f"{name}, frame {f}")
    # Not one output matched twice: the two conversations differ (seed, voice, prompt, audio).
    assert not np.allclose(got["x"][-1].pcm, got["y"][-1].pcm)
    stats = batch.leave(rows["x"])
    assert (stats.frames, stats.joined_frame) == (frames, 0) and stats.late <= stats.frames


def test_a_pipelines_new_sampling_settings_take_effect(tmp_path_factory) -> None:
    """`ModelPipeline.set_sampling` (each conversation's own settings, e.g. a `serve` client's): the
    pipeline then samples exactly as one made with those settings; the same settings change nothing."""
    from ppchat.engine.bench import _input_frames
    from ppchat.engine.pipeline import ModelPipeline
    from ppchat.models.loader import load_model
    from ppchat.sampling import Sampling

    model = load_model("demo", cache_root=tmp_path_factory.mktemp("cache"), depformer_steps=8, show_progress=False)
    audio = _input_frames(model.mimi.frame_size, model.mimi.sample_rate, 8, 4)
    wanted = Sampling(text=SamplingParams(1.2, 40), audio=SamplingParams(1.1, 30), seed=5)

    # A pipeline samples with the settings it was built (and warmed up) with, fitted to the model, and
    # a conversation started with the same settings keeps them (no new graphs).
    fresh = ModelPipeline(model, Sampling(), phase_timing=False)
    built = (fresh.gen.text_sampling, fresh.gen.audio_sampling)
    assert built[1].top_k == model.lm.config.card < Sampling().audio.top_k  # the demo's small vocabulary
    fresh.set_sampling(Sampling())
    assert (fresh.gen.text_sampling, fresh.gen.audio_sampling) == built

    def text(pipeline: ModelPipeline) -> list[int | None]:
        pipeline.start(None, "You enjoy having a good conversation.")
        return [pipeline.run_frame(frame)[1] for frame in audio]

    expected = text(ModelPipeline(model, wanted, phase_timing=False))
    changed = ModelPipeline(model, Sampling(text=SamplingParams(0.0, 1), audio=SamplingParams(0.0, 1), seed=9),
                            phase_timing=False)
    assert text(changed) != expected  # greedy, other seed: the settings matter here
    changed.set_sampling(wanted)
    assert text(changed) == expected
