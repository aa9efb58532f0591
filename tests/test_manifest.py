"""The derived reference key → shape sets equal the reference's own state dicts."""

import json

import pytest
from safetensors import safe_open

from ppchat.constants import REPO_ID
from ppchat.errors import CheckpointError
from ppchat.models import manifest
from tests.conftest import fixture_params, fixtures_root


def _file_shapes(path):
    with safe_open(str(path), "np") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _manifest_7b():
    path = fixtures_root() / "manifest_7b.json"
    if not path.is_file():
        pytest.fail(f"{path} missing (set PPCHAT_FIXTURES)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("lm_dir", fixture_params("lm"))
def test_lm_shapes_equal_fixture_checkpoint(lm_dir):
    cfg = json.loads((lm_dir / "config.json").read_text())
    assert manifest.lm_reference_shapes(cfg["lm_kwargs"]) == _file_shapes(lm_dir / "weights.safetensors")


@pytest.mark.parametrize("mimi_dir", fixture_params("mimi"))
def test_mimi_shapes_equal_fixture_checkpoint(mimi_dir):
    cfg = json.loads((mimi_dir / "config.json").read_text())
    assert manifest.mimi_reference_shapes(cfg) == _file_shapes(mimi_dir / "weights.safetensors")


def test_lm_shapes_equal_real_7b_key_set():
    m = _manifest_7b()["lm"]
    shapes = manifest.lm_reference_shapes(m["lm_kwargs"])
    assert len(shapes) == m["n_keys"] == 475
    assert shapes == {k: tuple(v) for k, v in m["keys"].items()}


def test_mimi_shapes_equal_real_7b_key_set():
    m = _manifest_7b()["mimi"]
    shapes = manifest.mimi_reference_shapes(m)
    assert len(shapes) == m["n_keys"] == 318
    assert shapes == {k: tuple(v) for k, v in m["keys"].items()}


def test_builtin_7b_configs_match_the_reference_manifest():
    m = _manifest_7b()
    assert manifest.personaplex_lm_config()["lm_kwargs"] == m["lm"]["lm_kwargs"]
    mimi = manifest.personaplex_mimi_config()
    for section in ("seanet", "quantizer", "transformer"):
        assert mimi[section] == m["mimi"][section]
    assert (manifest.LM_FILE, manifest.MIMI_FILE, manifest.TOKENIZER_FILE, REPO_ID) == (
        m["lm"]["file"], m["mimi"]["file"], m["tokenizer"], m["repo"]
    )


def test_builtin_configs_are_fresh_copies():
    manifest.personaplex_lm_config()["lm_kwargs"]["dim"] = 1
    assert manifest.personaplex_lm_config()["lm_kwargs"]["dim"] == 4096


def test_incomplete_config_is_a_checkpoint_error():
    kwargs = manifest.personaplex_lm_config()["lm_kwargs"]
    del kwargs["depformer_dim"]
    with pytest.raises(CheckpointError, match="depformer_dim"):
        manifest.lm_reference_shapes(kwargs)
