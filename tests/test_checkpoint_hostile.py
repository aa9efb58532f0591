"""Malformed model files fail as a `CheckpointError` naming the file and the field, before any
weight is allocated (issue 16.4)."""

from __future__ import annotations

import json
import struct

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from ppchat.cli import main
from ppchat.errors import CheckpointError
from ppchat.models.checkpoint import read_safetensors_header
from ppchat.models.loader import load_model
from tests.conftest import fixture_bundle


def write_header(path, header: dict, data: bytes = b"\0" * 64) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "entry,field",
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [True, 8]}, "data_offsets"),
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, "w"),
        ("F32", "w"),
    ],
)
def test_malformed_safetensors_header_entries_are_refused(tmp_path, entry, field):
    path = tmp_path / "weights.safetensors"
    write_header(path, {"w": entry})
    with pytest.raises(CheckpointError, match=rf"{path}.*'w'.*{field}|{path}.*'{field}'"):
        read_safetensors_header(path)


@pytest.fixture
def bundle(tmp_path):
    return fixture_bundle(tmp_path / "bundle")


def edit_config(path, change) -> None:
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


BAD_CONFIGS = [
    ("lm", "lm_kwargs.dim", lambda c: c["lm_kwargs"].update(dim="abc")),
    ("lm", "lm_kwargs.num_heads", lambda c: c["lm_kwargs"].update(num_heads=3)),  # 64 / 3
    ("lm", "lm_kwargs.num_heads", lambda c: c["lm_kwargs"].update(num_heads=64)),  # heads of width 1
    ("lm", "lm_kwargs.depformer_num_heads", lambda c: c["lm_kwargs"].update(depformer_num_heads=5)),
    ("lm", "lm_kwargs.num_layers", lambda c: c["lm_kwargs"].update(num_layers=-1)),
    ("lm", "lm_kwargs.context", lambda c: c["lm_kwargs"].update(context=1.5)),
    ("lm", "lm_kwargs.hidden_scale", lambda c: c["lm_kwargs"].update(hidden_scale="4")),
    ("lm", "lm_kwargs.delays", lambda c: c["lm_kwargs"].update(delays=[0, 1])),
    ("lm", "lm_kwargs.delays", lambda c: c["lm_kwargs"].update(delays="01")),
    ("lm", "lm_kwargs.text_card", lambda c: c["lm_kwargs"].update(text_card=None)),
    ("mimi", "transformer.num_heads", lambda c: c["transformer"].update(num_heads=3)),
    ("mimi", "seanet.ratios", lambda c: c["seanet"].update(ratios=[8, "x"])),
    ("mimi", "seanet.dimension", lambda c: c["seanet"].update(dimension=[512])),
    ("mimi", "quantizer.bins", lambda c: c["quantizer"].update(bins=0)),
]


@pytest.mark.parametrize("component,field,change", BAD_CONFIGS, ids=[f"{c}-{f}" for c, f, _ in BAD_CONFIGS])
def test_malformed_config_names_the_file_and_field_before_allocating(bundle, tmp_path, component, field, change):
    config = bundle / component / "config.json"
    edit_config(config, change)
    mx.clear_cache()
    mx.reset_peak_memory()
    with pytest.raises(CheckpointError) as err:
        load_model(bundle, cache_root=tmp_path / "cache", show_progress=False)
    assert str(config) in str(err.value) and f"'{field}'" in str(err.value)
    assert mx.get_peak_memory() == 0


def test_cli_says_it_in_one_line(bundle, tmp_path, capsys):
    edit_config(bundle / "lm" / "config.json", lambda c: c["lm_kwargs"].update(dim="abc"))
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(2400, np.float32), 24000)
    assert main(["respond", "-i", str(wav), "-o", str(tmp_path / "out.wav"), "--model", str(bundle), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'lm_kwargs.dim'" in err and "Traceback" not in err


def test_safetensors_with_string_offsets_through_the_loader(bundle, tmp_path):
    weights = bundle / "mimi" / "weights.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [str(o) for o in header[key]["data_offsets"]]
    new = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    with pytest.raises(CheckpointError, match=rf"{weights}.*'{key}'.*data_offsets"):
        load_model(bundle, cache_root=tmp_path / "cache", show_progress=False)


def test_a_good_header_still_reads(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"w": np.zeros((2, 3), np.float32)}, str(path))
    assert read_safetensors_header(path)["w"].shape == (2, 3)


def test_an_eight_step_depformer_is_diagnosed_before_allocating(bundle, tmp_path):
    """Kyutai's Moshi layout (a depformer with half the steps, spec §3.1), from its header alone."""
    from safetensors.numpy import load_file

    weights = bundle / "lm" / "weights.safetensors"
    dep_q = json.loads((bundle / "lm" / "config.json").read_text())["lm_kwargs"]["dep_q"]
    half, short = dep_q // 2, {}
    for key, value in load_file(str(weights)).items():
        parts = key.split(".")
        if parts[0] in ("depformer_in", "linears") and int(parts[1]) >= half:
            continue
        if parts[0] == "depformer_emb" and int(parts[1]) >= half - 1:
            continue
        if parts[0] == "depformer" and "gating" in parts and int(parts[parts.index("gating") + 1]) >= half:
            continue
        if parts[0] == "depformer" and parts[3] == "self_attn":
            value = value[: value.shape[0] // 2]
        short[key] = value
    save_file(short, str(weights))
    mx.clear_cache()
    mx.reset_peak_memory()
    with pytest.raises(CheckpointError, match=rf"{weights} has a {half}-step depformer .* needs {dep_q} steps"):
        load_model(bundle, cache_root=tmp_path / "cache", show_progress=False)
    assert mx.get_peak_memory() == 0
