"""load_model: sources, quantisation, and the cache of quantised weights."""

import io
import os
import tarfile
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from ppchat.errors import CheckpointError
from ppchat.models import hub, loader
from ppchat.models.checkpoint import open_checkpoint_dir
from ppchat.models.demo import ensure_demo_model
from ppchat.models.loader import load_model
from tests.conftest import fixture_bundle


def _init_column_logits(model):
    kw = model.config.lm_config["lm_kwargs"]
    tokens = mx.array([[kw["text_card"]] + [kw["card"]] * kw["n_q"]])[:, :, None]
    _, logits = model.lm.forward_embeddings(model.lm.embed_codes(tokens), model.lm.make_cache())
    return np.array(logits).ravel()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_demo_unquantised(cache):
    model = load_model("demo", cache_root=cache, show_progress=False)
    assert model.info.is_demo and model.info.quantization == "none" and model.info.quantized_cache is None
    assert model.tokenizer.vocab_size == model.config.lm_config["lm_kwargs"]["text_card"]
    pcm = mx.zeros((1, 1, 1920))
    assert model.mimi.encode(pcm).shape == (1, 8, 1)
    assert np.all(np.isfinite(_init_column_logits(model)))


@pytest.mark.parametrize("bits, group", [(4, 32), (8, 64)])
def test_quantised_weights_are_cached_and_reused(cache, bits, group):
    dense = _init_column_logits(load_model("demo", cache_root=cache, show_progress=False))
    first = load_model("demo", quantize=bits, cache_root=cache, show_progress=False)
    assert (first.info.quantization, first.info.group_size, first.info.cache_hit) == (f"q{bits}", group, False)
    assert first.info.quantized_cache.is_file()
    assert type(first.lm.text_linear).__name__ == "QuantizedLinear"
    q_logits = _init_column_logits(first)
    assert not np.array_equal(q_logits, dense)  # quantisation really happened...
    assert np.corrcoef(q_logits, dense)[0, 1] > 0.95  # ...and kept the function

    second = load_model("demo", quantize=bits, cache_root=cache, show_progress=False)
    assert second.info.cache_hit and second.info.quantized_cache == first.info.quantized_cache
    np.testing.assert_array_equal(_init_column_logits(second), q_logits)


def test_changed_source_gets_a_new_conversion_and_drops_the_stale_one(cache):
    first = load_model("demo", quantize=4, cache_root=cache, show_progress=False)
    weights = first.config.lm_weights_path
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    # The demo's checksum marker does not cover mtimes, so the same files are reused.
    second = load_model("demo", quantize=4, cache_root=cache, show_progress=False)
    assert not second.info.cache_hit and second.info.quantized_cache != first.info.quantized_cache
    assert not first.info.quantized_cache.exists()


def test_corrupt_cache_is_recreated(cache):
    first = load_model("demo", quantize=4, cache_root=cache, show_progress=False)
    path = first.info.quantized_cache
    path.write_bytes(path.read_bytes()[:100])
    again = load_model("demo", quantize=4, cache_root=cache, show_progress=False)
    assert not again.info.cache_hit and path.is_file()
    np.testing.assert_array_equal(_init_column_logits(again), _init_column_logits(first))


def test_fixture_bundle_loads(tmp_path):
    root = fixture_bundle(tmp_path / "bundle")
    model = load_model(root, cache_root=tmp_path / "cache", show_progress=False)
    assert not model.info.is_demo and model.info.lm_dtype == "float32"


def test_a_codec_with_weight_norm_pairs_loads_as_the_folded_one(tmp_path):
    """Spec §3.2: a variant Mimi checkpoint may carry `weight_g`/`weight_v` pairs instead of `weight`;
    the header check and the loader both take them (and a pair that does not fold is named)."""
    root = fixture_bundle(tmp_path / "bundle")
    plain = load_model(root, cache_root=tmp_path / "cache", show_progress=False).mimi
    path = root / "mimi" / "weights.safetensors"
    weights = mx.load(str(path))
    key = "decoder.model.2.convtr.convtr.weight"  # a transposed conv: axis 0 is its input
    w = weights.pop(key)
    weights[key + "_v"] = w * mx.arange(1, w.shape[0] + 1, dtype=w.dtype).reshape(-1, 1, 1)
    weights[key + "_g"] = mx.sqrt(mx.sum(w * w, axis=(1, 2), keepdims=True))
    mx.save_safetensors(str(path), weights)
    folded = load_model(root, cache_root=tmp_path / "cache", show_progress=False).mimi
    codes = mx.array(np.arange(8 * 3).reshape(1, 8, 3) % 7, dtype=mx.int32)
    np.testing.assert_allclose(np.array(folded.decode(codes)), np.array(plain.decode(codes)), atol=1e-5)

    weights[key + "_g"] = weights[key + "_g"][:-1]  # one value short: not a pair that folds
    mx.save_safetensors(str(path), weights)
    with pytest.raises(CheckpointError, match=rf"missing keys \(1\): {key}; unexpected keys \(2\)"):
        load_model(root, cache_root=tmp_path / "cache", show_progress=False)


def test_depformer_steps_are_passed_through(cache):
    model = load_model("demo", quantize=4, cache_root=cache, depformer_steps=8, show_progress=False)
    assert model.info.depformer_steps == 8 and "s8-" in model.info.quantized_cache.name


def test_invalid_quantisation(cache):
    with pytest.raises(CheckpointError, match="4 or 8 bit"):
        load_model("demo", quantize=3, cache_root=cache)


def test_repo_id_goes_through_the_hub_without_download_when_not_allowed(cache, monkeypatch):
    calls = []

    def fake_download(repo_id, offline=False):
        calls.append((repo_id, offline))
        raise CheckpointError("not cached")

    monkeypatch.setattr(hub, "download_model", fake_download)
    with pytest.raises(CheckpointError, match="not cached"):
        loader.resolve_source("nvidia/personaplex-7b-v1", cache, allow_download=False)
    assert calls == [("nvidia/personaplex-7b-v1", True)]



def _voices_tgz(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("voices/NATF0.pt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return path


def test_voices_archive_is_unpacked_next_to_it(tmp_path):
    ckpt = open_checkpoint_dir(ensure_demo_model(tmp_path / "cache"))
    assert loader.resolve_voices_dir(ckpt, tmp_path / "cache") is None  # the demo ships no voices
    archive = _voices_tgz(tmp_path / "snap" / "voices.tgz")
    voices = loader.resolve_voices_dir(replace(ckpt, voices_archive=archive), tmp_path / "cache")
    assert voices == tmp_path / "snap" / "voices" and (voices / "NATF0.pt").read_bytes() == b"abc"


def test_voices_go_to_the_cache_when_the_snapshot_is_read_only(tmp_path, monkeypatch):
    ckpt = open_checkpoint_dir(ensure_demo_model(tmp_path / "cache"))
    archive = _voices_tgz(tmp_path / "snap" / "voices.tgz")
    real_extract = hub.extract_voices

    def read_only_snapshot(source, dest_parent):
        if dest_parent == archive.parent:
            raise CheckpointError("cannot unpack: permission denied")
        return real_extract(source, dest_parent)

    monkeypatch.setattr(hub, "extract_voices", read_only_snapshot)
    monkeypatch.setattr(loader.os, "access", lambda path, mode: False)
    voices = loader.resolve_voices_dir(replace(ckpt, voices_archive=archive), tmp_path / "cache")
    assert voices.is_relative_to(tmp_path / "cache") and (voices / "NATF0.pt").read_bytes() == b"abc"
    assert not (archive.parent / "voices").exists()
