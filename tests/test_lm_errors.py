"""The LM loader refuses checkpoints that do not match the PersonaPlex layout, naming the bad key."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from ppchat.errors import CheckpointError
from ppchat.models import manifest as manifest_module
from ppchat.models.lm import LM, LMConfig
from tests.conftest import fixture_params, fixtures_root

LM_DIRS = fixture_params("lm")


def fixture_model(lm_dir: Path) -> tuple[LM, dict[str, mx.array]]:
    config = json.loads((lm_dir / "config.json").read_text())
    return LM(LMConfig.from_reference(config["lm_kwargs"])), mx.load(str(lm_dir / "weights.safetensors"))


@pytest.mark.parametrize("lm_dir", LM_DIRS)
def test_missing_key_is_named(lm_dir: Path) -> None:
    lm, weights = fixture_model(lm_dir)
    del weights["transformer.layers.1.norm2.alpha"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): transformer\.layers\.1\.norm2\.alpha"):
        lm.load_reference_weights(weights)


@pytest.mark.parametrize("lm_dir", LM_DIRS)
def test_unexpected_key_is_named(lm_dir: Path) -> None:
    lm, weights = fixture_model(lm_dir)
    weights["transformer.layers.0.layer_scale_1.scale"] = mx.zeros((lm.config.dim,))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): transformer\.layers\.0\.layer_scale_1\.scale"):
        lm.load_reference_weights(weights)


@pytest.mark.parametrize("lm_dir", LM_DIRS)
def test_wrong_shape_is_named(lm_dir: Path) -> None:
    lm, weights = fixture_model(lm_dir)
    weights["text_linear.weight"] = weights["text_linear.weight"][:-1]
    with pytest.raises(CheckpointError, match=r"wrong shapes \(1\): text_linear\.weight"):
        lm.load_reference_weights(weights)


@pytest.mark.parametrize("lm_dir", LM_DIRS)
def test_eight_step_depformer_is_refused(lm_dir: Path) -> None:
    """Kyutai's Moshi layout: per-step tensors for 8 steps only (spec §3.1, loader patches 1-2)."""
    lm, weights = fixture_model(lm_dir)
    half = lm.config.dep_q // 2
    short = {}
    for key, value in weights.items():
        parts = key.split(".")
        if parts[0] in ("depformer_in", "linears") and int(parts[1]) >= half:
            continue
        if parts[0] == "depformer_emb" and int(parts[1]) >= half - 1:
            continue
        if "gating" in parts and parts[0] == "depformer" and int(parts[parts.index("gating") + 1]) >= half:
            continue
        if parts[0] == "depformer" and parts[3] == "self_attn":
            value = value[: value.shape[0] // 2]
        short[key] = value
    with pytest.raises(CheckpointError, match=rf"{half}-step depformer.*self_attn\.in_proj_weight"):
        lm.load_reference_weights(short)


@pytest.mark.parametrize("lm_dir", LM_DIRS)
def test_failed_load_leaves_a_clear_message_not_a_traceback(lm_dir: Path) -> None:
    lm, weights = fixture_model(lm_dir)
    weights["emb.0.weight"] = mx.zeros((3, 3))
    with pytest.raises(CheckpointError) as info:
        lm.load_reference_weights(weights, source="model.safetensors")
    assert str(info.value).startswith("model.safetensors does not match")
    assert "emb.0.weight [3, 3] (expected [65, 64])" in str(info.value)


def test_unsupported_config_is_refused() -> None:
    manifest = json.loads((fixtures_root() / "manifest_7b.json").read_text())
    kwargs = dict(manifest["lm"]["lm_kwargs"], norm="layer_norm")
    with pytest.raises(CheckpointError, match="norm='layer_norm'"):
        LMConfig.from_reference(kwargs)


def test_7b_layout_matches_reference_manifest() -> None:
    manifest = json.loads((fixtures_root() / "manifest_7b.json").read_text())["lm"]
    config = LMConfig.from_reference(manifest["lm_kwargs"])
    assert config == LMConfig.personaplex_7b()
    expected = {key: tuple(shape) for key, shape in manifest["keys"].items()}
    assert manifest_module.lm_reference_shapes(config.reference_kwargs()) == expected


@pytest.mark.parametrize("lm_dir", LM_DIRS)
def test_reference_kwargs_rebuild_the_config_and_its_key_set(lm_dir) -> None:
    # The LM checks weights against manifest.lm_reference_shapes(config.reference_kwargs()): those
    # kwargs must describe the same network as the checkpoint's own config.json.
    kwargs = json.loads((lm_dir / "config.json").read_text())["lm_kwargs"]
    config = LMConfig.from_reference(kwargs)
    assert LMConfig.from_reference(config.reference_kwargs()) == config
    assert manifest_module.lm_reference_shapes(config.reference_kwargs()) == manifest_module.lm_reference_shapes(kwargs)
    seven_b = LMConfig.personaplex_7b()
    assert LMConfig.from_reference(seven_b.reference_kwargs()) == seven_b
