"""Voice prompts (`kind: voice` fixtures): run A feeds the voice's Mimi codes, run B replays the
`.pt` embeddings and token ring (`pt_embeddings`/`pt_cache`); both must reproduce the reference rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ppchat.models.generator import VoiceEmbeddings
from ppchat.models.tracing import TracingLMGen
from tests.conftest import fixture_params
from tests.test_lm_parity import check_call, drive_call, load_lm, make_gen, prompt_plan, rows_of


def load_voice_fixture(voice_dir: Path):
    config = json.loads((voice_dir / "config.json").read_text())
    lm, lm_config = load_lm(voice_dir.parent / config["lm_dir"])
    return lm, lm_config, load_file(str(voice_dir / "io.safetensors"))


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_voice_codes_prompt_matches_reference(voice_dir: Path) -> None:
    lm, lm_config, io = load_voice_fixture(voice_dir)
    rows = rows_of(io, "a_")
    gen = make_gen(lm, lm_config, TracingLMGen, batch_prefill=False)
    worst: dict[str, float] = {}
    for n in range(len(rows["phase"])):
        out = drive_call(gen, rows, n)
        # The reference could not return depformer logits during the voice phase (zeros there).
        check_call(gen, out, rows, n, worst, dep_logits=rows["phase"][n] != 0)
    print(f"{voice_dir.name} run A: worst abs error {worst}")


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
def test_pt_voice_replay_matches_reference(voice_dir: Path) -> None:
    lm, lm_config, io = load_voice_fixture(voice_dir)
    rows = rows_of(io, "b_")
    replayed = np.flatnonzero(rows["from_embedding"] == 1)
    assert len(replayed) == len(io["pt_embeddings"])
    gen = make_gen(lm, lm_config, TracingLMGen, batch_prefill=False)
    worst: dict[str, float] = {}
    for n in range(len(rows["phase"])):
        if rows["from_embedding"][n]:
            out = gen.step_embeddings(io["pt_embeddings"][n])
            if n == replayed[-1]:
                gen.set_token_ring(io["pt_cache"])
        else:
            out = drive_call(gen, rows, n)
        check_call(gen, out, rows, n, worst)
    print(f"{voice_dir.name} run B: worst abs error {worst}")


@pytest.mark.parametrize("voice_dir", fixture_params("voice"))
@pytest.mark.parametrize("run", ["a", "b"])
def test_batched_system_prompts_give_reference_live_calls(voice_dir: Path, run: str) -> None:
    lm, lm_config, io = load_voice_fixture(voice_dir)
    rows = rows_of(io, f"{run}_")
    text_tokens, silence, first_live = prompt_plan(rows)
    if run == "a":
        voice = io["voice_codes"]
    else:
        voice = VoiceEmbeddings(io["pt_embeddings"], io["pt_cache"])
    gen = make_gen(lm, lm_config, TracingLMGen, batch_prefill=True, prefill_chunk=4)
    gen.run_system_prompts(voice=voice, text_tokens=text_tokens, silence_frames=silence)
    worst: dict[str, float] = {}
    for n in range(first_live, len(rows["phase"])):
        check_call(gen, drive_call(gen, rows, n), rows, n, worst)
    print(f"{voice_dir.name} run {run.upper()} batched: worst abs error {worst}")
