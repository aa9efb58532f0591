"""Safe safetensors reading and key/shape validation."""

import json
import struct

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from ppchat.errors import CheckpointError
from ppchat.models import manifest
from ppchat.models.checkpoint import TensorInfo, read_safetensors, read_safetensors_header, validate
from tests.conftest import fixture_params


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], dtype=np.int64)}, str(path))
    return path


def test_reads_tensors_and_header(small_file):
    weights = read_safetensors(small_file)
    assert weights["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and weights["b"].dtype == mx.int64
    assert read_safetensors_header(small_file) == {"a": TensorInfo("F32", (2, 3)), "b": TensorInfo("I64", (1,))}


@pytest.mark.parametrize("lm_dir", fixture_params("lm"))
def test_fixture_weights_pass_validation(lm_dir):
    cfg = json.loads((lm_dir / "config.json").read_text())
    expected = manifest.lm_reference_shapes(cfg["lm_kwargs"])
    validate(read_safetensors(lm_dir / "weights.safetensors"), expected)
    validate(read_safetensors_header(lm_dir / "weights.safetensors"), expected)


def test_missing_file_names_it_and_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors.*ppchat download"):
        read_safetensors(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("cut", [0, 4, 20, -1])
def test_truncated_file_is_refused(small_file, cut):
    data = small_file.read_bytes()
    small_file.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*(truncated|incomplete)"):
        read_safetensors(small_file)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    header = b"not json at all"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_safetensors(path)


def test_validate_accepts_exact_match():
    validate({"x": (2, 3), "y": mx.zeros((4,))}, {"x": (2, 3), "y": (4,)})


def test_validate_lists_missing_unexpected_and_wrong_shapes():
    with pytest.raises(CheckpointError) as info:
        validate({"x": (2, 4), "extra": (1,)}, {"x": (2, 3), "y": (4,)}, source="lm.safetensors")
    msg = str(info.value)
    assert "lm.safetensors" in msg and "missing keys (1): y" in msg and "unexpected keys (1): extra" in msg
    assert "x [2, 4] (expected [2, 3])" in msg


def test_validate_summarises_long_lists():
    expected = {f"k{i}": (1,) for i in range(100)}
    with pytest.raises(CheckpointError) as info:
        validate({}, expected)
    msg = str(info.value)
    assert "missing keys (100)" in msg and "(92 more)" in msg and len(msg) < 400


def test_eight_step_depformer_is_called_out():
    kwargs = manifest.personaplex_lm_config()["lm_kwargs"]
    manifest.refuse_short_depformer(manifest.lm_reference_shapes(kwargs), kwargs, "model.safetensors")
    eight_step = manifest.lm_reference_shapes({**kwargs, "dep_q": 8})
    with pytest.raises(CheckpointError, match="model.safetensors has a 8-step depformer .* needs 16 steps; .*Moshi"):
        manifest.refuse_short_depformer(eight_step, kwargs, "model.safetensors")
