"""A Mimi checkpoint or config that does not fit must fail as a CheckpointError that names the culprit."""

from __future__ import annotations

import json
import re

import mlx.core as mx
import numpy as np
import pytest

from ppchat.errors import CheckpointError
from ppchat.models import manifest
from ppchat.models.checkpoint import read_safetensors_header
from ppchat.models.mimi import Mimi, MimiConfig
from tests.conftest import fixture_params

MIMI_FIXTURES = fixture_params("mimi")
FIRST_CONV = "encoder.model.0.conv.conv.weight"


def _config_dict(fixture_dir) -> dict:
    return json.loads((fixture_dir / "config.json").read_text())


def _mimi_and_weights(fixture_dir) -> tuple[Mimi, dict[str, mx.array]]:
    mimi = Mimi(MimiConfig.from_reference(_config_dict(fixture_dir)))
    return mimi, mx.load(str(fixture_dir / "weights.safetensors"))


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_reference_config_rebuilds_the_config_and_the_checkpoint_key_set(fixture_dir):
    # Mimi checks weights against manifest.mimi_reference_shapes(config.reference_config()): that
    # config must describe the network the checkpoint's own config.json does, key for key.
    config = MimiConfig.from_reference(_config_dict(fixture_dir))
    assert MimiConfig.from_reference(config.reference_config()) == config
    header = read_safetensors_header(fixture_dir / "weights.safetensors")
    assert manifest.mimi_reference_shapes(config.reference_config()) == {k: t.shape for k, t in header.items()}
    seven_b = MimiConfig.personaplex()
    assert MimiConfig.from_reference(seven_b.reference_config()) == seven_b


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_missing_key_is_named(fixture_dir):
    mimi, weights = _mimi_and_weights(fixture_dir)
    key = "decoder_transformer.transformer.layers.0.norm1.bias"
    del weights[key]
    with pytest.raises(CheckpointError, match=re.escape(f"missing keys (1): {key}")):
        mimi.load_reference_weights(weights)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_missing_codebook_in_use_is_named(fixture_dir):
    mimi, weights = _mimi_and_weights(fixture_dir)
    del weights["quantizer.rvq_rest.vq.layers.0._codebook.cluster_usage"]
    with pytest.raises(CheckpointError, match=r"quantizer\.rvq_rest\.vq\.layers\.0\._codebook\.cluster_usage"):
        mimi.load_reference_weights(weights)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_unexpected_key_is_named(fixture_dir):
    mimi, weights = _mimi_and_weights(fixture_dir)
    weights["encoder.model.99.conv.conv.weight"] = mx.zeros((1, 1, 1))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): encoder\.model\.99\.conv\.conv\.weight"):
        mimi.load_reference_weights(weights)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_wrong_shape_is_named_with_both_shapes(fixture_dir):
    mimi, weights = _mimi_and_weights(fixture_dir)
    good = weights[FIRST_CONV]
    weights[FIRST_CONV] = good[:, :, :-1]
    expected = list(good.shape)
    got = list(good[:, :, :-1].shape)
    with pytest.raises(CheckpointError, match=re.escape(f"{FIRST_CONV} {got} (expected {expected})")):
        mimi.load_reference_weights(weights)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_unused_codebooks_and_flags_may_be_absent(fixture_dir):
    """Only the first `num_codebooks` codebooks are read, so a trimmed checkpoint still loads, identically."""
    mimi, weights = _mimi_and_weights(fixture_dir)
    used_rest = mimi.num_codebooks - 1
    trimmed = {
        k: v
        for k, v in weights.items()
        if not k.endswith("._initialized")
        and not (k.startswith("quantizer.rvq_rest.vq.layers.") and int(k.split(".")[4]) >= used_rest)
    }
    assert len(trimmed) < len(weights)
    reference, _ = _mimi_and_weights(fixture_dir)
    reference.load_reference_weights(weights)
    mimi.load_reference_weights(trimmed)
    pcm = mx.load(str(fixture_dir / "io.safetensors"))["pcm_in"]
    np.testing.assert_array_equal(np.array(mimi.encode(pcm)), np.array(reference.encode(pcm)))


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_weight_norm_pairs_are_folded(fixture_dir):
    """weight = g * v / ||v|| (norm over all axes but 0): any v proportional to the weight per output
    channel, with g its norm, must reproduce the plain checkpoint."""
    mimi, weights = _mimi_and_weights(fixture_dir)
    reference, _ = _mimi_and_weights(fixture_dir)
    reference.load_reference_weights(weights)
    for key in (FIRST_CONV, "decoder.model.2.convtr.convtr.weight"):
        w = weights.pop(key)
        scale = mx.arange(1, w.shape[0] + 1, dtype=mx.float32).reshape(-1, 1, 1)
        weights[key + "_v"] = w * scale
        weights[key + "_g"] = mx.sqrt(mx.sum(w * w, axis=(1, 2), keepdims=True))
    mimi.load_reference_weights(weights)
    pcm = mx.load(str(fixture_dir / "io.safetensors"))["pcm_in"]
    np.testing.assert_array_equal(np.array(mimi.encode(pcm)), np.array(reference.encode(pcm)))
    codes = reference.encode(pcm)
    np.testing.assert_allclose(np.array(mimi.decode(codes)), np.array(reference.decode(codes)), atol=1e-5)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_config_without_section_is_rejected(fixture_dir):
    cfg = _config_dict(fixture_dir)
    del cfg["quantizer"]
    with pytest.raises(CheckpointError, match="'quantizer'"):
        MimiConfig.from_reference(cfg)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_config_missing_key_is_named(fixture_dir):
    cfg = _config_dict(fixture_dir)
    del cfg["transformer"]["context"]
    with pytest.raises(CheckpointError, match="'context'"):
        MimiConfig.from_reference(cfg)


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("transformer", "gating", "silu"), ("seanet", "true_skip", False), ("transformer", "norm", "rms_norm"),
        ("transformer", "layer_scale", None), ("quantizer", "n_q_semantic", 2),
    ],
)
@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_config_with_unsupported_network_is_rejected(fixture_dir, section, key, value):
    cfg = _config_dict(fixture_dir)
    cfg[section][key] = value
    with pytest.raises(CheckpointError, match=rf"{section}\.{key}"):
        MimiConfig.from_reference(cfg)


@pytest.mark.parametrize("fixture_dir", MIMI_FIXTURES)
def test_config_with_inconsistent_frame_size_is_rejected(fixture_dir):
    cfg = _config_dict(fixture_dir)
    cfg["frame_size"] = int(cfg.get("frame_size", 1920)) + 1
    with pytest.raises(CheckpointError, match="frame_size"):
        MimiConfig.from_reference(cfg)
