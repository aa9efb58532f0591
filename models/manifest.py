"""What a reference checkpoint must contain: file names, 7B configs and key → shape sets.

The shapes are derived from the reference hyper-parameters (spec §3) exactly as the
PyTorch module tree would name them in its `state_dict`, so a checkpoint can be checked
against them from its safetensors header alone, without allocating any weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping
from typing import Any

from ppchat.constants import FRAME_RATE, FRAME_SAMPLES, REPO_ID, SAMPLE_RATE, SILENCE_TOKENS, SINE_TOKENS
from ppchat.errors import CheckpointError

Shape = tuple[int, ...]

LM_FILE = "model.safetensors"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
VOICES_ARCHIVE = "voices.tgz"
HUB_FILES = (LM_FILE, MIMI_FILE, TOKENIZER_FILE, VOICES_ARCHIVE)

# The real model in the same config.json layout as the fixture / demo directories, so
# every consumer reads one format. Values are the hard-coded ones of the reference
# loader (spec §2); the hub's own config.json is never parsed (spec §11.3).
_PERSONAPLEX_LM_CONFIG: dict[str, Any] = {
    "kind": "lm",
    "dtype": "bfloat16",
    "lm_kwargs": {
        "dim": 4096,
        "text_card": 32000,
        "existing_text_padding_id": 3,
        "n_q": 16,
        "dep_q": 16,
        "card": 2048,
        "num_heads": 32,
        "num_layers": 32,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": 3000,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 1024,
        "depformer_dim_feedforward": 4224,
        "depformer_num_heads": 16,
        "depformer_num_layers": 6,
        "depformer_causal": True,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 8,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    },
    "zero_text_code": 3,
    "audio_silence_frame_cnt": 6,
    "silence_tokens": list(SILENCE_TOKENS),
    "sine_tokens": list(SINE_TOKENS),
}

_PERSONAPLEX_MIMI_CONFIG: dict[str, Any] = {
    "kind": "mimi",
    "seanet": {
        "channels": 1,
        "dimension": 512,
        "causal": True,
        "n_filters": 64,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {"dimension": 256, "n_q": 32, "bins": 2048, "input_dimension": 512, "output_dimension": 512},
    "transformer": {
        "d_model": 512,
        "num_heads": 8,
        "num_layers": 8,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 2048,
        "input_dimension": 512,
        "output_dimensions": [512],
    },
    "sample_rate": SAMPLE_RATE,
    "frame_rate": FRAME_RATE,
    "frame_size": FRAME_SAMPLES,
    "num_codebooks": 8,
    "resample_method": "conv",
    "upsample_channel_wise_bug": True,
}


def personaplex_lm_config() -> dict[str, Any]:
    """The 7B LM config (a fresh copy: callers may mutate it)."""
    return copy.deepcopy(_PERSONAPLEX_LM_CONFIG)


def personaplex_mimi_config() -> dict[str, Any]:
    """The Mimi codec config of the real checkpoint (a fresh copy)."""
    return copy.deepcopy(_PERSONAPLEX_MIMI_CONFIG)


# --- config value checks: run before any shape is derived or any weight is allocated ---------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(cfg: dict, where: str, names: tuple[str, ...], *, minimum: int = 1, optional: bool = False) -> None:
    for name in names:
        if optional and cfg.get(name) is None:
            continue
        value = _require(cfg, name, where)
        if not _is_int(value) or value < minimum:
            what = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
            raise CheckpointError(f"'{where}.{name}' should be {what}, not {value!r}")


def _check_numbers(cfg: dict, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = cfg.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise CheckpointError(f"'{where}.{name}' should be a positive number, not {value!r}")


def _check_int_list(cfg: dict, where: str, name: str, minimum: int, length: int | None = None) -> None:
    value = _require(cfg, name, where)
    if not isinstance(value, list) or not all(_is_int(v) and v >= minimum for v in value) or not value:
        raise CheckpointError(f"'{where}.{name}' should be a list of whole numbers >= {minimum}, not {value!r}")
    if length is not None and len(value) != length:
        raise CheckpointError(f"'{where}.{name}' has {len(value)} entries; it needs {length}")


def _check_heads(cfg: dict, where: str, width: str, heads: str) -> None:
    # Attention splits the width into heads, and rotary embeddings rotate pairs of a head's channels.
    dim, num_heads = cfg[width], cfg[heads]
    if dim % num_heads or (dim // num_heads) % 2:
        raise CheckpointError(
            f"'{where}.{heads}' = {num_heads} does not split '{where}.{width}' = {dim} into heads of an even size"
        )


def check_lm_kwargs(lm_kwargs: Any) -> None:
    """Types and ranges of the LM hyper-parameters; `CheckpointError` names the bad field."""
    where = "lm_kwargs"
    if not isinstance(lm_kwargs, dict):
        raise CheckpointError(f"'{where}' should be an object of hyper-parameters")
    _check_ints(lm_kwargs, where, ("dim", "text_card", "n_q", "dep_q", "card", "num_heads", "num_layers", "context",
                                   "depformer_dim", "depformer_num_heads", "depformer_num_layers"))  # fmt: skip
    _check_ints(lm_kwargs, where, ("dim_feedforward", "depformer_dim_feedforward", "depformer_context"), optional=True)
    _check_ints(lm_kwargs, where, ("existing_text_padding_id",), minimum=0, optional=True)
    _check_numbers(lm_kwargs, where, ("hidden_scale", "max_period", "depformer_max_period"))
    _check_int_list(lm_kwargs, where, "delays", 0, lm_kwargs["n_q"] + 1)
    for name in ("norm", "gating", "depformer_gating"):
        if name in lm_kwargs and not isinstance(lm_kwargs[name], str):
            raise CheckpointError(f"'{where}.{name}' should be a string, not {lm_kwargs[name]!r}")
    _check_heads(lm_kwargs, where, "dim", "num_heads")
    _check_heads(lm_kwargs, where, "depformer_dim", "depformer_num_heads")


def check_mimi_config(cfg: Any) -> None:
    """Types and ranges of the Mimi hyper-parameters; `CheckpointError` names the bad field."""
    for section in ("seanet", "quantizer", "transformer"):
        if not isinstance(cfg.get(section), dict):
            raise CheckpointError(f"'{section}' should be an object of hyper-parameters")
    seanet, quantizer, transformer = cfg["seanet"], cfg["quantizer"], cfg["transformer"]
    _check_ints(seanet, "seanet", ("channels", "dimension", "n_filters", "kernel_size", "residual_kernel_size",
                                   "last_kernel_size"))  # fmt: skip
    _check_ints(seanet, "seanet", ("compress", "dilation_base"), optional=True)
    _check_ints(seanet, "seanet", ("n_residual_layers",), minimum=0)
    _check_int_list(seanet, "seanet", "ratios", 1)
    _check_ints(quantizer, "quantizer", ("dimension", "n_q", "bins"))
    _check_ints(quantizer, "quantizer", ("input_dimension", "output_dimension", "n_q_semantic"), optional=True)
    _check_ints(transformer, "transformer", ("d_model", "num_heads", "num_layers", "dim_feedforward", "context"))
    _check_ints(transformer, "transformer", ("input_dimension",), optional=True)
    _check_numbers(transformer, "transformer", ("max_period",))
    _check_heads(transformer, "transformer", "d_model", "num_heads")
    _check_ints(cfg, "mimi", ("sample_rate", "num_codebooks", "frame_size"), optional=True)
    _check_numbers(cfg, "mimi", ("frame_rate",))


def _require(cfg: dict, name: str, where: str) -> Any:
    if name not in cfg:
        raise CheckpointError(f"model config is missing '{name}' in {where}; the config.json is incomplete")
    return cfg[name]


def gating_hidden_dim(dim: int, dim_feedforward: int) -> int:
    """Hidden width of the reference `ActivationGating` (its own rounding rule, spec pitfall 5):
    8·d² parameters approximated by 21/8·d when ff = 4·d."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


def shape_problems(actual: Mapping[str, Any], expected: Mapping[str, Shape], optional: Collection[str] = ()) -> list[str]:
    """What keeps a key set from matching a reference key → shape set, one phrase per kind
    (`missing keys (N): …`, `unexpected keys (N): …`, `wrong shapes (N): key [got] (expected [want])`);
    empty when it matches. `actual` maps keys to arrays, `TensorInfo`s or shapes; `optional` keys
    may be missing."""
    shapes = _shapes(actual)
    missing = sorted(k for k in expected if k not in shapes and k not in optional)
    unexpected = sorted(k for k in shapes if k not in expected)
    wrong = sorted(
        f"{k} {list(shapes[k])} (expected {list(expected[k])})"
        for k in expected
        if k in shapes and shapes[k] != tuple(expected[k])
    )
    return [_listed(label, items) for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                       ("wrong shapes", wrong)) if items]


def refuse_short_depformer(actual: Mapping[str, Any], lm_kwargs: Mapping[str, Any], source: str) -> None:
    """Refuse an LM key set whose depformer holds fewer steps than `dep_q` (Kyutai's 8-step Moshi
    layout, spec §3.1) with that diagnosis, rather than as a list of missing keys. `actual` maps keys
    to arrays, `TensorInfo`s or shapes."""
    shapes = _shapes(actual)
    dep_q, dep_dim = lm_kwargs["dep_q"], lm_kwargs["depformer_dim"]
    in_proj = shapes.get("depformer.layers.0.self_attn.in_proj_weight")
    steps_in_proj = in_proj[0] // (3 * dep_dim) if in_proj is not None and len(in_proj) == 2 else dep_q
    steps_in_heads = sum(1 for s in range(dep_q) if f"linears.{s}.weight" in shapes)
    steps = min(steps_in_proj, steps_in_heads) if steps_in_heads else steps_in_proj
    if steps < dep_q:
        raise CheckpointError(
            f"{source} has a {steps}-step depformer (depformer.layers.0.self_attn.in_proj_weight, linears.*), "
            f"but PersonaPlex needs {dep_q} steps; this looks like a Kyutai Moshi checkpoint, not {REPO_ID}"
        )


def weight_norm_pairs(actual: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """`X.weight` → (`X.weight_g`, `X.weight_v`) for each weight-norm pair in `actual` (keys to arrays,
    `TensorInfo`s or shapes) that folds into one weight: g holds one value per entry of v's axis 0
    (spec §3.2: a variant checkpoint may carry these instead of `X.weight`)."""
    shapes = _shapes(actual)
    pairs = {}
    for g_key, g_shape in shapes.items():
        v_shape = shapes.get(g_key[:-1] + "v") if g_key.endswith(".weight_g") else None
        if v_shape and math.prod(g_shape) == v_shape[0]:
            pairs[g_key[:-2]] = (g_key, g_key[:-1] + "v")
    return pairs


def weight_norm_folded(actual: Mapping[str, Any]) -> dict[str, Shape]:
    """The key → shape set `actual` has once its weight-norm pairs are folded (`weight_norm_pairs`)."""
    shapes = _shapes(actual)
    for key, (g_key, v_key) in weight_norm_pairs(shapes).items():
        del shapes[g_key]
        shapes[key] = shapes.pop(v_key)
    return shapes


def _shapes(actual: Mapping[str, Any]) -> dict[str, Shape]:
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in actual.items()}


def _listed(label: str, items: list[str], limit: int = 8) -> str:
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{label} ({len(items)}): {', '.join(items[:limit])}{more}"


def _norm_shapes(prefix: str, norm: str, dim: int) -> dict[str, Shape]:
    if norm.startswith("rms_norm"):
        return {f"{prefix}.alpha": (1, 1, dim)}
    if norm == "layer_norm":
        return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}
    raise CheckpointError(f"unsupported norm '{norm}' in the model config (expected rms_norm_f32 or layer_norm)")


def _transformer_shapes(
    prefix: str,
    *,
    dim: int,
    num_layers: int,
    dim_feedforward: int,
    norm: str,
    gating: str,
    layer_scale: float | None,
    steps: int = 1,
) -> dict[str, Shape]:
    """Keys of a reference `StreamingTransformer`; `steps` > 1 means weights_per_step."""
    shapes: dict[str, Shape] = {}
    for layer in range(num_layers):
        p = f"{prefix}.layers.{layer}"
        shapes[f"{p}.self_attn.in_proj_weight"] = (steps * 3 * dim, dim)
        shapes[f"{p}.self_attn.out_proj.weight"] = (steps * dim, dim)
        shapes.update(_norm_shapes(f"{p}.norm1", norm, dim))
        shapes.update(_norm_shapes(f"{p}.norm2", norm, dim))
        if gating == "none":
            shapes[f"{p}.linear1.weight"] = (dim_feedforward, dim)
            shapes[f"{p}.linear2.weight"] = (dim, dim_feedforward)
        else:
            hidden = gating_hidden_dim(dim, dim_feedforward)
            gates = [f"{p}.gating.{s}" for s in range(steps)] if steps > 1 else [f"{p}.gating"]
            for g in gates:
                shapes[f"{g}.linear_in.weight"] = (2 * hidden, dim)
                shapes[f"{g}.linear_out.weight"] = (dim, hidden)
        if layer_scale is not None:
            shapes[f"{p}.layer_scale_1.scale"] = (dim,)
            shapes[f"{p}.layer_scale_2.scale"] = (dim,)
    return shapes


def lm_reference_shapes(lm_kwargs: dict[str, Any]) -> dict[str, Shape]:
    """Reference `LMModel(**lm_kwargs).state_dict()` key → shape, for PersonaPlex-style LMs.

    Supports what PersonaPlex and Moshi use: gated FFNs, multi-linear depformer input,
    optional per-step depformer weights. Anything else is refused as unsupported.
    """
    check_lm_kwargs(lm_kwargs)
    where = "lm_kwargs"
    dim = _require(lm_kwargs, "dim", where)
    card = _require(lm_kwargs, "card", where)
    text_card = _require(lm_kwargs, "text_card", where)
    n_q = _require(lm_kwargs, "n_q", where)
    dep_q = _require(lm_kwargs, "dep_q", where)
    hidden_scale = lm_kwargs.get("hidden_scale", 4)
    norm = lm_kwargs.get("norm", "layer_norm")
    dep_dim = _require(lm_kwargs, "depformer_dim", where)
    if not lm_kwargs.get("depformer_multi_linear", False):
        raise CheckpointError("unsupported LM config: depformer_multi_linear must be true (PersonaPlex layout)")
    # Without an existing padding id the reference appends one extra text class.
    text_out = text_card + (lm_kwargs.get("existing_text_padding_id") is None)
    dep_steps = dep_q if lm_kwargs.get("depformer_weights_per_step", False) else 1

    shapes: dict[str, Shape] = {}
    for i in range(n_q):
        shapes[f"emb.{i}.weight"] = (card + 1, dim)
    shapes["text_emb.weight"] = (text_card + 1, dim)
    shapes["text_linear.weight"] = (text_out, dim)
    shapes.update(
        _transformer_shapes(
            "transformer",
            dim=dim,
            num_layers=_require(lm_kwargs, "num_layers", where),
            dim_feedforward=lm_kwargs.get("dim_feedforward", int(hidden_scale * dim)),
            norm=norm,
            gating=lm_kwargs.get("gating", "none"),
            layer_scale=lm_kwargs.get("layer_scale"),
        )
    )
    shapes.update(_norm_shapes("out_norm", norm, dim))
    for s in range(dep_q):
        shapes[f"depformer_in.{s}.weight"] = (dep_dim, dim)
    for s in range(dep_q - 1):
        shapes[f"depformer_emb.{s}.weight"] = (card + 1, dep_dim)
    shapes["depformer_text_emb.weight"] = (text_card + 1, dep_dim)
    dep_ff = lm_kwargs.get("depformer_dim_feedforward")
    shapes.update(
        _transformer_shapes(
            "depformer",
            dim=dep_dim,
            num_layers=_require(lm_kwargs, "depformer_num_layers", where),
            dim_feedforward=dep_ff if dep_ff is not None else int(hidden_scale * dep_dim),
            norm=norm,
            gating=lm_kwargs.get("depformer_gating", lm_kwargs.get("gating", "none")),
            layer_scale=lm_kwargs.get("depformer_layer_scale", lm_kwargs.get("layer_scale")),
            steps=dep_steps,
        )
    )
    for s in range(dep_q):
        shapes[f"linears.{s}.weight"] = (card, dep_dim)
    return shapes


def _conv(prefix: str, c_out: int, c_in: int, kernel: int) -> dict[str, Shape]:
    return {f"{prefix}.conv.conv.weight": (c_out, c_in, kernel), f"{prefix}.conv.conv.bias": (c_out,)}


def _resblock(prefix: str, dim: int, hidden: int, kernel: int) -> dict[str, Shape]:
    return {**_conv(f"{prefix}.block.1", hidden, dim, kernel), **_conv(f"{prefix}.block.3", dim, hidden, 1)}


def _seanet_shapes(seanet: dict[str, Any]) -> dict[str, Shape]:
    where = "seanet"
    if seanet.get("lstm", 0) or not seanet.get("true_skip", True):
        raise CheckpointError("unsupported Mimi config: SEANet with LSTM or learnt skip convs")
    channels = _require(seanet, "channels", where)
    dimension = _require(seanet, "dimension", where)
    n_filters = _require(seanet, "n_filters", where)
    n_res = _require(seanet, "n_residual_layers", where)
    ratios = list(_require(seanet, "ratios", where))
    compress = seanet.get("compress", 2)
    kernel = _require(seanet, "kernel_size", where)
    res_kernel = _require(seanet, "residual_kernel_size", where)
    last_kernel = _require(seanet, "last_kernel_size", where)

    shapes: dict[str, Shape] = {}
    # Encoder: conv, then per ratio (reversed) [resblocks..., ELU, strided conv], then ELU, conv.
    idx, mult = 0, 1
    shapes.update(_conv(f"encoder.model.{idx}", mult * n_filters, channels, kernel))
    idx += 1
    for ratio in reversed(ratios):
        c = mult * n_filters
        for _ in range(n_res):
            shapes.update(_resblock(f"encoder.model.{idx}", c, c // compress, res_kernel))
            idx += 1
        idx += 1  # ELU
        shapes.update(_conv(f"encoder.model.{idx}", 2 * c, c, 2 * ratio))
        idx += 1
        mult *= 2
    idx += 1  # ELU
    shapes.update(_conv(f"encoder.model.{idx}", dimension, mult * n_filters, last_kernel))

    # Decoder: conv, then per ratio [ELU, transposed conv, resblocks...], then ELU, conv.
    idx, mult = 0, 2 ** len(ratios)
    shapes.update(_conv(f"decoder.model.{idx}", mult * n_filters, dimension, kernel))
    idx += 1
    for ratio in ratios:
        c_in, c_out = mult * n_filters, mult * n_filters // 2
        idx += 1  # ELU
        p = f"decoder.model.{idx}.convtr.convtr"
        shapes[f"{p}.weight"] = (c_in, c_out, 2 * ratio)  # ConvTranspose layout [in, out, k]
        shapes[f"{p}.bias"] = (c_out,)
        idx += 1
        for _ in range(n_res):
            shapes.update(_resblock(f"decoder.model.{idx}", c_out, c_out // compress, res_kernel))
            idx += 1
        mult //= 2
    idx += 1  # ELU
    shapes.update(_conv(f"decoder.model.{idx}", channels, n_filters, last_kernel))
    return shapes


def _projected_transformer_shapes(prefix: str, tcfg: dict[str, Any]) -> dict[str, Shape]:
    where = "transformer"
    d_model = _require(tcfg, "d_model", where)
    shapes: dict[str, Shape] = {}
    in_dim = tcfg.get("input_dimension", d_model)
    if in_dim != d_model:
        shapes[f"{prefix}.input_proj.weight"] = (d_model, in_dim)
    shapes.update(
        _transformer_shapes(
            f"{prefix}.transformer",
            dim=d_model,
            num_layers=_require(tcfg, "num_layers", where),
            dim_feedforward=_require(tcfg, "dim_feedforward", where),
            norm=tcfg.get("norm", "layer_norm"),
            gating=tcfg.get("gating", "none"),
            layer_scale=tcfg.get("layer_scale"),
        )
    )
    for i, out_dim in enumerate(tcfg.get("output_dimensions", [d_model])):
        if out_dim != d_model:
            shapes[f"{prefix}.output_projs.{i}.weight"] = (out_dim, d_model)
    return shapes


def _rvq_shapes(prefix: str, n_q: int, bins: int, dim: int, in_dim: int, out_dim: int) -> dict[str, Shape]:
    # force_projection=True in Mimi: the 1x1 projections exist even when dims agree.
    shapes: dict[str, Shape] = {
        f"{prefix}.input_proj.weight": (dim, in_dim, 1),
        f"{prefix}.output_proj.weight": (out_dim, dim, 1),
    }
    for layer in range(n_q):
        p = f"{prefix}.vq.layers.{layer}._codebook"
        shapes[f"{p}._initialized"] = (1,)
        shapes[f"{p}.cluster_usage"] = (bins,)
        shapes[f"{p}.embedding_sum"] = (bins, dim)
    return shapes


def mimi_reference_shapes(cfg: dict[str, Any]) -> dict[str, Shape]:
    """Reference `MimiModel` state-dict key → shape for a config.json-style Mimi config.

    `cfg` holds `seanet`, `quantizer` and `transformer` kwargs (fixture / manifest layout),
    plus optionally `sample_rate`, `frame_rate` and `upsample_channel_wise_bug`.
    """
    check_mimi_config(cfg)
    seanet = _require(cfg, "seanet", "the Mimi config")
    quantizer = _require(cfg, "quantizer", "the Mimi config")
    transformer = _require(cfg, "transformer", "the Mimi config")
    if cfg.get("resample_method", "conv") != "conv":
        raise CheckpointError("unsupported Mimi config: resample_method must be 'conv'")

    shapes = _seanet_shapes(seanet)
    shapes.update(_projected_transformer_shapes("encoder_transformer", transformer))
    shapes.update(_projected_transformer_shapes("decoder_transformer", transformer))

    dimension = seanet["dimension"]
    hop = 1
    for ratio in seanet["ratios"]:
        hop *= ratio
    encoder_rate = cfg.get("sample_rate", SAMPLE_RATE) / hop
    stride = int(round(encoder_rate / cfg.get("frame_rate", FRAME_RATE)))
    if stride > 1:
        shapes["downsample.conv.conv.conv.weight"] = (dimension, dimension, 2 * stride)
        groups_out = 1 if cfg.get("upsample_channel_wise_bug", True) else dimension
        shapes["upsample.convtr.convtr.convtr.weight"] = (dimension, groups_out, 2 * stride)

    n_q = _require(quantizer, "n_q", "quantizer")
    n_semantic = quantizer.get("n_q_semantic", 1)
    bins = _require(quantizer, "bins", "quantizer")
    dim = _require(quantizer, "dimension", "quantizer")
    in_dim = quantizer.get("input_dimension", dim)
    out_dim = quantizer.get("output_dimension", dim)
    shapes.update(_rvq_shapes("quantizer.rvq_first", n_semantic, bins, dim, in_dim, out_dim))
    shapes.update(_rvq_shapes("quantizer.rvq_rest", n_q - n_semantic, bins, dim, in_dim, out_dim))
    return shapes
