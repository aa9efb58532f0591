"""Recognising model directories: hub snapshots of the real model and lm/ + mimi/ bundles."""

import json
import shutil
import struct

import pytest

from ppchat.errors import CheckpointError
from ppchat.models import manifest
from ppchat.models.checkpoint import open_checkpoint_dir, open_component_dir
from tests.conftest import fixture_dirs, fixtures_root

_BYTES = {"bfloat16": 2, "float32": 4}


def _sparse_safetensors(path, keys: dict, dtypes: dict):
    """A complete-looking safetensors file of the real size whose data is a sparse hole."""
    header, offset = {}, 0
    for key, shape in keys.items():
        n = _BYTES[dtypes[key]]
        for d in shape:
            n *= d
        header[key] = {"dtype": "BF16" if dtypes[key] == "bfloat16" else "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


@pytest.fixture
def hub_snapshot(tmp_path):
    m = json.loads((fixtures_root() / "manifest_7b.json").read_text())
    root = tmp_path / "snapshot"
    root.mkdir()
    try:
        _sparse_safetensors(root / manifest.LM_FILE, m["lm"]["keys"], m["lm"]["dtypes"])
        _sparse_safetensors(root / manifest.MIMI_FILE, m["mimi"]["keys"], m["mimi"]["dtypes"])
    except OSError as exc:
        pytest.skip(f"filesystem cannot hold sparse 16 GB files: {exc}")
    shutil.copy(fixtures_root() / "tokenizer_tiny.model", root / manifest.TOKENIZER_FILE)
    (root / manifest.VOICES_ARCHIVE).write_bytes(b"")
    return root


def test_hub_snapshot_is_recognised_with_7b_configs(hub_snapshot):
    ckpt = open_checkpoint_dir(hub_snapshot)
    assert ckpt.layout == "hub" and not ckpt.is_demo
    assert ckpt.lm_config["lm_kwargs"]["dim"] == 4096 and ckpt.lm_config["lm_kwargs"]["dep_q"] == 16
    assert ckpt.mimi_config["quantizer"]["n_q"] == 32
    assert ckpt.lm_weights_path == hub_snapshot / manifest.LM_FILE
    assert ckpt.tokenizer_path.name == manifest.TOKENIZER_FILE
    assert ckpt.voices_dir is None and ckpt.voices_archive == hub_snapshot / manifest.VOICES_ARCHIVE


def test_real_7b_key_set_validates_from_headers_only(hub_snapshot):
    # The files are holes of the real size: passing proves no tensor data was touched.
    open_checkpoint_dir(hub_snapshot).validate_weights()


def test_7b_checkpoint_with_a_wrong_shape_is_refused(hub_snapshot, tmp_path):
    m = json.loads((fixtures_root() / "manifest_7b.json").read_text())
    keys = dict(m["lm"]["keys"], **{"text_linear.weight": [32001, 4096]})
    _sparse_safetensors(hub_snapshot / manifest.LM_FILE, keys, m["lm"]["dtypes"])
    with pytest.raises(CheckpointError, match=r"text_linear\.weight \[32001, 4096\] \(expected \[32000, 4096\]\)"):
        open_checkpoint_dir(hub_snapshot).validate_weights()


def test_hub_snapshot_missing_a_file_names_it(hub_snapshot):
    (hub_snapshot / manifest.MIMI_FILE).unlink()
    with pytest.raises(CheckpointError, match=manifest.MIMI_FILE + ".*ppchat download"):
        open_checkpoint_dir(hub_snapshot)


@pytest.fixture
def bundle(tmp_path):
    lm_dirs, mimi_dirs = fixture_dirs("lm"), fixture_dirs("mimi")
    if not lm_dirs or not mimi_dirs:
        pytest.fail(f"no lm/mimi fixtures under {fixtures_root()}")
    root = tmp_path / "bundle"
    root.mkdir()
    shutil.copytree(lm_dirs[0], root / "some_lm")
    shutil.copytree(mimi_dirs[0], root / "some_mimi")
    shutil.copy(fixtures_root() / "tokenizer_tiny.model", root / "tok.model")
    return root


def test_bundle_components_are_found_by_kind(bundle):
    ckpt = open_checkpoint_dir(bundle)
    assert ckpt.layout == "bundle" and not ckpt.is_demo and ckpt.voices_dir is None
    assert ckpt.lm_weights_path == bundle / "some_lm" / "weights.safetensors"
    assert ckpt.mimi_config["kind"] == "mimi" and "lm_kwargs" in ckpt.lm_config
    assert ckpt.tokenizer_path == bundle / "tok.model"
    ckpt.validate_weights()


def test_bundle_with_two_lm_folders_is_ambiguous(bundle):
    shutil.copytree(bundle / "some_lm", bundle / "other_lm")
    with pytest.raises(CheckpointError, match="ambiguous"):
        open_checkpoint_dir(bundle)


def test_empty_directory_explains_expected_layouts(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{manifest.LM_FILE}.*lm/ and mimi/"):
        open_checkpoint_dir(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint_dir(tmp_path / "nowhere")


def test_component_of_the_wrong_kind_is_refused(bundle):
    with pytest.raises(CheckpointError, match="'lm' model where a 'mimi'"):
        open_component_dir(bundle / "some_lm", "mimi")


def test_component_with_broken_config(bundle):
    (bundle / "some_lm" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        open_component_dir(bundle / "some_lm")


def test_component_without_weights(bundle):
    (bundle / "some_mimi" / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights.safetensors is missing"):
        open_component_dir(bundle / "some_mimi")
