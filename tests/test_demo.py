"""The built-in random demo model: deterministic, valid reference layout, self-healing cache."""
import numpy as np
import pytest

from ppchat.constants import SILENCE_TOKENS, SINE_TOKENS
from ppchat.models import demo, manifest
from ppchat.models.checkpoint import open_checkpoint_dir, read_safetensors
from ppchat.models.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo.ensure_demo_model(tmp_path_factory.mktemp("cache"))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(demo_dir, tmp_path):
    other = demo.ensure_demo_model(tmp_path)
    assert other == tmp_path / "demo-v1"
    assert _tree(other) == _tree(demo_dir)
    assert set(_tree(other)) == {
        "DEMO", "tokenizer.model", "lm/config.json", "lm/weights.safetensors", "mimi/config.json", "mimi/weights.safetensors",
    }


def test_is_a_demo_bundle_in_the_reference_layout(demo_dir):
    ckpt = open_checkpoint_dir(demo_dir)
    assert ckpt.is_demo and ckpt.layout == "bundle"
    ckpt.validate_weights()  # keys and shapes equal lm/mimi_reference_shapes
    assert "random" in (demo_dir / "DEMO").read_text().splitlines()[0].lower()


def test_keeps_the_personaplex_structure(demo_dir):
    cfg = open_checkpoint_dir(demo_dir)
    lm, mimi = cfg.lm_config, cfg.mimi_config
    real = manifest.personaplex_lm_config()["lm_kwargs"]
    kw = lm["lm_kwargs"]
    assert (kw["n_q"], kw["dep_q"], kw["delays"]) == (real["n_q"], real["dep_q"], real["delays"])
    assert kw["existing_text_padding_id"] == 3 and lm["zero_text_code"] == 3
    assert mimi["seanet"]["ratios"] == [8, 6, 5, 4] and mimi["sample_rate"] == 24000
    assert mimi["quantizer"]["bins"] == kw["card"] and mimi["num_codebooks"] == 8
    assert lm["silence_tokens"] == [t % kw["card"] for t in SILENCE_TOKENS]
    assert lm["sine_tokens"] == [t % kw["card"] for t in SINE_TOKENS]


def test_tokenizer_matches_the_lm_text_vocabulary(demo_dir):
    ckpt = open_checkpoint_dir(demo_dir)
    tok = TextTokenizer(ckpt.tokenizer_path)
    assert tok.vocab_size == ckpt.lm_config["lm_kwargs"]["text_card"]
    ids = tok.encode_system_prompt("You enjoy having a good conversation.")
    assert ids and all(4 <= i < tok.vocab_size for i in ids)
    assert "".join(tok.piece(i) for i in ids).strip() == "<system> You enjoy having a good conversation. <system>"


def test_weights_are_sane(demo_dir):
    lm = read_safetensors(demo_dir / "lm" / "weights.safetensors")
    mimi = read_safetensors(demo_dir / "mimi" / "weights.safetensors")
    assert np.all(np.array(lm["transformer.layers.0.norm1.alpha"]) == 1.0)
    assert np.all(np.array(mimi["quantizer.rvq_first.vq.layers.0._codebook.cluster_usage"]) == 1.0)
    scale = np.array(mimi["encoder_transformer.transformer.layers.0.layer_scale_1.scale"])
    assert np.allclose(scale, 0.01)
    # fan-in scaling: a [out, in] projection has std ≈ in^-1/2
    w = np.array(lm["transformer.layers.0.self_attn.in_proj_weight"])
    assert w.std() == pytest.approx(w.shape[1] ** -0.5, rel=0.1)


def test_intact_model_is_not_rebuilt(demo_dir, monkeypatch):
    monkeypatch.setattr(demo, "build_demo_model", lambda root: pytest.fail("rebuilt an intact demo model"))
    assert demo.ensure_demo_model(demo_dir.parent) == demo_dir


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_damaged_model_is_regenerated(tmp_path, damage):
    root = demo.ensure_demo_model(tmp_path)
    original = _tree(root)
    weights = root / "mimi" / "weights.safetensors"
    if damage == "corrupt":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    assert demo.ensure_demo_model(tmp_path) == root
    assert _tree(root) == original
    assert [p.name for p in tmp_path.iterdir()] == ["demo-v1"]  # no staging leftovers


def test_default_location_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.ensure_demo_model() == tmp_path / "ppchat" / "demo-v1"


# --- integration with the model classes --------------------------------------------------------


def test_demo_loads_into_mimi_and_round_trips_finite_audio(demo_dir):
    import mlx.core as mx

    mimi_mod = pytest.importorskip("ppchat.models.mimi", reason="ppchat.models.mimi is not written yet")
    ckpt = open_checkpoint_dir(demo_dir)
    mimi = mimi_mod.Mimi(mimi_mod.MimiConfig.from_reference(ckpt.mimi_config))
    mimi.load_reference_weights(read_safetensors(ckpt.mimi_weights_path))
    t = np.arange(4 * 1920) / 24000
    pcm = mx.array((0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32))[None, None]
    codes = mimi.encode(pcm)
    assert codes.shape == (1, 8, 4)
    card = ckpt.mimi_config["quantizer"]["bins"]
    assert int(codes.min()) >= 0 and int(codes.max()) < card
    audio = np.array(mimi.decode(codes))
    assert audio.shape == (1, 1, 4 * 1920) and np.all(np.isfinite(audio))
    assert 1e-4 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() < 1.0  # neither vanishing nor exploding


def test_demo_loads_into_the_lm_and_gives_finite_logits(demo_dir):
    import mlx.core as mx

    lm_mod = pytest.importorskip("ppchat.models.lm", reason="ppchat.models.lm is not written yet")
    ckpt = open_checkpoint_dir(demo_dir)
    cfg = lm_mod.LMConfig.from_reference(ckpt.lm_config["lm_kwargs"])
    lm = lm_mod.LM(cfg)
    lm.load_reference_weights(read_safetensors(ckpt.lm_weights_path))
    kw = ckpt.lm_config["lm_kwargs"]
    tokens = mx.array([[kw["text_card"]] + [kw["card"]] * kw["n_q"]])[:, :, None]  # the all-INIT column
    h, logits = lm.forward_embeddings(lm.embed_codes(tokens), lm.make_cache())
    logits = np.array(logits)
    assert logits.shape == (1, 1, kw["text_card"]) and np.all(np.isfinite(logits))
    assert 0.1 < logits.std() < 10  # fan-in scaling keeps logits O(1)
