"""`ppchat bench` end to end on the demo model, and the compiled fast path against the eager one.

No timing thresholds here (speed is measured by the benchmark itself, see BENCHMARKS.md): these
tests check that the report is complete and sane, and that compiling does not change any token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from ppchat.commands import bench as bench_command
from ppchat.models.mimi import Mimi, MimiConfig
from tests.conftest import fixture_params
from tests.test_lm_parity import load_lm, make_gen, prompt_plan, rows_of


def run_cli(argv: list[str], capsys) -> dict:
    parser = argparse.ArgumentParser(prog="ppchat")
    bench_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("phases", [False, True])
def test_bench_demo_json_has_every_field(tmp_path: Path, monkeypatch, capsys, phases: bool) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    argv = ["bench", "--model", "demo", "--frames", "5", "--warmup", "2", "--voice-frames", "6", "--json"]
    result = run_cli(argv + (["--phases"] if phases else []), capsys)

    assert result["mlx_version"] == mx.__version__
    assert result["device"] == str(mx.default_device())
    assert result["frames"] == 5 and result["frame_ms"] == 80.0
    assert result["mode"] == ("phases" if phases else "one-sync")
    expected = {"encode", "temporal", "depformer", "decode", "total"} if phases else {"total"}
    assert set(result["timings_ms"]) == expected
    for stats in result["timings_ms"].values():
        assert 0 < stats["min"] <= stats["median"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    if phases:  # the phases are measured inside the frame, so they cannot add up to more than it
        parts = sum(result["timings_ms"][p]["min"] for p in ("encode", "temporal", "depformer", "decode"))
        assert parts <= result["timings_ms"]["total"]["max"]
    assert result["frames_per_second"] > 0
    assert result["real_time_factor"] == pytest.approx(result["timings_ms"]["total"]["mean"] / 80.0)
    prefill = result["prefill"]
    # Voice (N_v - 1 replayed embeddings, call 0 passes) + 6 silence + prompt tokens + 6 silence calls.
    assert prefill["voice_frames"] == 6 and prefill["prompt_tokens"] > 0
    assert prefill["calls"] == 6 + 6 + prefill["prompt_tokens"] + 6
    assert prefill["seconds"] > 0 and prefill["cold_seconds"] > 0 and result["load_seconds"] > 0
    model = result["model"]
    assert model["source"] == "demo" and model["quantization"] == "none" and model["depformer_steps"] == 8
    memory = result["memory"]
    assert memory["peak_bytes"] >= memory["streaming_peak_bytes"] >= memory["active_end_bytes"] > model["lm_weight_bytes"] > 0
    assert memory["active_trace"][-1][0] == 5
    assert memory["active_growth_bytes"] == memory["active_end_bytes"] - memory["active_start_bytes"]


def test_bench_rejects_bad_frame_count(tmp_path: Path, monkeypatch, capsys) -> None:
    from ppchat.errors import PPChatError

    parser = argparse.ArgumentParser(prog="ppchat")
    bench_command.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--frames", "0"])
    with pytest.raises(PPChatError, match="--frames"):
        args.func(args)


def live_tokens(lm_dir: Path, compile: bool, lazy: bool) -> list[np.ndarray]:
    """The live calls of the fixture's prompted run (greedy), through `step` or `step_live`."""
    config = json.loads((lm_dir / "config.json").read_text())
    lm, config = load_lm(lm_dir, depformer_steps=config["lm_kwargs"]["n_q"] // 2)
    rows = rows_of(load_file(str(lm_dir / "io.safetensors")))
    text_tokens, silence, first_live = prompt_plan(rows)
    gen = make_gen(lm, config, compile=compile)
    gen.run_system_prompts(text_tokens=text_tokens, silence_frames=silence)
    out = []
    for n in range(first_live, len(rows["phase"])):
        if lazy:
            live = gen.step_live(mx.array(rows["in_user"][n]))
            mx.eval(live.arrays)
            result = live.result()
            np.testing.assert_array_equal(np.array(live.agent_codes), result.agent_codes)
        else:
            result = gen.step(user_codes=rows["in_user"][n])
        out.append(result.tokens)
        np.testing.assert_array_equal(result.tokens, rows["out"][n], err_msg=f"call {n} compile={compile} lazy={lazy}")
    return out


@pytest.mark.parametrize("lm_dir", fixture_params("lm"))
def test_compiled_step_gives_the_same_tokens(lm_dir: Path) -> None:
    eager = live_tokens(lm_dir, compile=False, lazy=False)
    for lazy in (False, True):
        np.testing.assert_array_equal(np.stack(live_tokens(lm_dir, compile=True, lazy=lazy)), np.stack(eager))


@pytest.mark.parametrize("mimi_dir", fixture_params("mimi"))
def test_compiled_mimi_streaming_matches_the_reference(mimi_dir: Path) -> None:
    config = json.loads((mimi_dir / "config.json").read_text())
    io = load_file(str(mimi_dir / "io.safetensors"))
    mimi = Mimi(MimiConfig.from_reference(config), compile_streaming=True)
    mimi.load_reference_weights(mx.load(str(mimi_dir / "weights.safetensors")))
    frame = mimi.frame_size
    pcm = io["pcm_in"]
    frames = pcm.shape[-1] // frame
    codes = np.concatenate(
        [np.array(mimi.encode_step(mx.array(pcm[:, :, i * frame : (i + 1) * frame]))) for i in range(frames)], axis=-1
    )
    np.testing.assert_array_equal(codes, io["codes_stream"])
    mimi.reset()
    stream = io["codes_stream"]
    decoded = np.concatenate([np.array(mimi.decode_step(mx.array(stream[:, :, i : i + 1]))) for i in range(stream.shape[-1])], axis=-1)
    np.testing.assert_allclose(decoded, io["pcm_stream"], atol=1e-4)


def test_bench_conversations_reports_every_conversation(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    argv = ["bench", "--model", "demo", "--conversations", "2", "--churn", "3", "--frames", "7", "--warmup", "2",
            "--voice-frames", "6", "--json"]
    result = run_cli(argv, capsys)
    assert result["mode"] == "batched" and result["conversations"] == 2 and result["frames"] == 7
    stats = result["timings_ms"]["total"]
    assert 0 < stats["min"] <= stats["median"] <= stats["p99"] <= stats["max"]
    # Two joined in the warm-up; churn at frames 3 and 6 ended the two oldest and let two more in.
    rows = result["per_conversation"]
    assert sorted(r["conversation"] for r in rows) == [1, 2, 3, 4]
    assert sum(r["frames"] for r in rows if r["conversation"] > 2) == 4 + 1
    assert all(r["late"] <= r["frames"] for r in rows)
    assert result["joins"]["churn_seconds"]["min"] > 0


def test_bench_churn_needs_conversations(capsys) -> None:
    parser = argparse.ArgumentParser(prog="ppchat")
    bench_command.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--churn", "3"])
    with pytest.raises(Exception, match="--churn, at least 0, needs --conversations"):
        bench_command.bench_options(args)
