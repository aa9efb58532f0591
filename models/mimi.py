"""The Mimi neural audio codec (moshi `models/compression.py::MimiModel`), float32, in MLX.

Encode: PCM -> SEANet encoder -> encoder transformer -> learnt downsample (25 -> 12.5 Hz, replicate
padding) -> split RVQ codes. Decode: codes -> RVQ sum -> depthwise learnt upsample -> decoder transformer
-> SEANet decoder -> PCM. Public tensors use the reference layout (PCM `[B, 1, T]`, codes `[B, K, F]`);
inside, activations are NLC.

Loading checks the reference state dict (spec §3.2) against `manifest.mimi_reference_shapes` of the
config (the one key → shape set, also used to check a checkpoint's header before anything is loaded),
then maps it onto this module tree one parameter at a time (`_ReferenceParam`: the source keys and the
layout transform).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ppchat.constants import FRAME_RATE, SAMPLE_RATE
from ppchat.errors import CheckpointError
from ppchat.models import manifest
from ppchat.models.conv import PAD_MODES, StreamingConv1d, StreamingConvTranspose1d
from ppchat.models.manifest import shape_problems
from ppchat.models.mimi_transformer import MimiTransformer, MimiTransformerConfig
from ppchat.models.quantizer import EuclideanCodebook, QuantizerConfig, SplitResidualVectorQuantizer
from ppchat.models.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder

Shape = tuple[int, ...]


# What this implementation builds, beyond the hyper-parameters a `MimiConfig` holds: the reference
# settings `from_reference` requires (or, for `layer_scale`, requires set: the layers have learnt
# scales, whatever their initial value), written back by `reference_config`.
_SEANET_SETTINGS = {"causal": True, "activation": "ELU", "true_skip": True, "norm": "none", "lstm": 0}
_TRANSFORMER_SETTINGS = {
    "causal": True, "gating": "none", "norm": "layer_norm", "positional_embedding": "rope", "layer_scale": 1.0,
}  # fmt: skip


@dataclass(frozen=True)
class MimiConfig:
    """Everything that shapes a Mimi codec. PersonaPlex's is `personaplex()`, from the manifest (the
    one place its values are written); any other comes from a checkpoint's config (`from_reference`)."""

    seanet: SEANetConfig
    quantizer: QuantizerConfig
    transformer: MimiTransformerConfig
    num_codebooks: int
    sample_rate: int
    frame_rate: float
    # `upsample_channel_wise_bug` of the reference: the upsample is depthwise (groups = channels).
    upsample_depthwise: bool

    @property
    def frame_size(self) -> int:
        """PCM samples per code frame."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def resample_stride(self) -> int:
        """Latent steps (SEANet rate) per code frame: the stride of `downsample` and `upsample`."""
        return int(self.sample_rate / self.seanet.hop_length / self.frame_rate)

    @classmethod
    def personaplex(cls) -> MimiConfig:
        """The codec shipped with PersonaPlex 7B (`tokenizer-e351c8d8-checkpoint125.safetensors`)."""
        return cls.from_reference(manifest.personaplex_mimi_config())

    @classmethod
    def from_reference(cls, cfg: dict) -> MimiConfig:
        """Build from a reference-style dict: `seanet`/`quantizer`/`transformer` kwargs plus optional
        `num_codebooks`, `sample_rate`, `frame_rate`, `frame_size`, `resample_method`,
        `upsample_channel_wise_bug` (PersonaPlex values when absent).

        Raises CheckpointError naming the key when a value is missing or describes a network this
        implementation does not build.
        """
        seanet = _section(cfg, "seanet")
        quantizer = _section(cfg, "quantizer")
        transformer = _section(cfg, "transformer")
        _expect(seanet, "seanet", "causal", (True,))
        _expect(seanet, "seanet", "activation", ("ELU",))
        _expect(seanet, "seanet", "true_skip", (True,))
        _expect(seanet, "seanet", "norm", ("none", "weight_norm"))
        _expect(seanet, "seanet", "lstm", (0,), default=0)
        _expect(seanet, "seanet", "pad_mode", PAD_MODES)
        _expect(transformer, "transformer", "causal", (True,))
        _expect(transformer, "transformer", "gating", ("none",))
        _expect(transformer, "transformer", "norm", ("layer_norm",))
        _expect(transformer, "transformer", "positional_embedding", ("rope",))
        if transformer.get("layer_scale") is None:
            raise CheckpointError(
                "Mimi config transformer.layer_scale = None is not supported (ppchat builds learnt layer scales)"
            )
        _expect(quantizer, "quantizer", "n_q_semantic", (1,), default=1)
        _expect(cfg, "config", "resample_method", ("conv",), default="conv")
        try:
            config = cls(
                seanet=SEANetConfig(
                    channels=int(seanet["channels"]),
                    dimension=int(seanet["dimension"]),
                    n_filters=int(seanet["n_filters"]),
                    ratios=tuple(int(r) for r in seanet["ratios"]),
                    kernel_size=int(seanet["kernel_size"]),
                    residual_kernel_size=int(seanet["residual_kernel_size"]),
                    last_kernel_size=int(seanet["last_kernel_size"]),
                    n_residual_layers=int(seanet["n_residual_layers"]),
                    dilation_base=int(seanet["dilation_base"]),
                    compress=int(seanet["compress"]),
                    pad_mode=seanet["pad_mode"],
                ),
                quantizer=QuantizerConfig(
                    dimension=int(quantizer["dimension"]),
                    n_q=int(quantizer["n_q"]),
                    bins=int(quantizer["bins"]),
                    input_dimension=int(quantizer["input_dimension"]),
                    output_dimension=int(quantizer["output_dimension"]),
                ),
                transformer=MimiTransformerConfig(
                    d_model=int(transformer["d_model"]),
                    num_heads=int(transformer["num_heads"]),
                    num_layers=int(transformer["num_layers"]),
                    dim_feedforward=int(transformer["dim_feedforward"]),
                    context=int(transformer["context"]),
                    max_period=float(transformer["max_period"]),
                ),
                num_codebooks=int(cfg.get("num_codebooks", 8)),
                sample_rate=int(cfg.get("sample_rate", SAMPLE_RATE)),
                frame_rate=float(cfg.get("frame_rate", FRAME_RATE)),
                upsample_depthwise=bool(cfg.get("upsample_channel_wise_bug", True)),
            )
        except KeyError as err:
            raise CheckpointError(
                f"Mimi config is missing key {err.args[0]!r}; use the config that came with the checkpoint"
            ) from None
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"Mimi config has a malformed value ({err}); use the config that came with the checkpoint"
            ) from None
        config._check_consistent(cfg, transformer)
        return config

    def reference_config(self) -> dict:
        """The reference-style config (fixture / manifest layout) that builds this codec: its
        hyper-parameters and the settings this implementation requires. `from_reference` of it is
        this config again, and `manifest.mimi_reference_shapes` of it the one key → shape set."""
        s, q, t, d = self.seanet, self.quantizer, self.transformer, self.seanet.dimension
        return {
            "seanet": {
                **_SEANET_SETTINGS, "channels": s.channels, "dimension": d, "n_filters": s.n_filters,
                "ratios": list(s.ratios), "kernel_size": s.kernel_size, "residual_kernel_size": s.residual_kernel_size,
                "last_kernel_size": s.last_kernel_size, "n_residual_layers": s.n_residual_layers,
                "dilation_base": s.dilation_base, "compress": s.compress, "pad_mode": s.pad_mode,
            },
            "quantizer": {
                "dimension": q.dimension, "n_q": q.n_q, "n_q_semantic": 1, "bins": q.bins,
                "input_dimension": q.input_dimension, "output_dimension": q.output_dimension,
            },
            "transformer": {
                **_TRANSFORMER_SETTINGS, "d_model": t.d_model, "num_heads": t.num_heads, "num_layers": t.num_layers,
                "dim_feedforward": t.dim_feedforward, "context": t.context, "max_period": t.max_period,
                "input_dimension": d, "output_dimensions": [d],
            },
            "num_codebooks": self.num_codebooks,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "resample_method": "conv",
            "upsample_channel_wise_bug": self.upsample_depthwise,
        }  # fmt: skip

    def _check_consistent(self, cfg: dict, transformer: dict) -> None:
        """The pieces must fit together the way MimiModel wires them (no extra projections anywhere)."""
        d = self.seanet.dimension
        problems = []
        for key, value in (
            ("transformer.d_model", self.transformer.d_model),
            ("transformer.input_dimension", transformer.get("input_dimension", d)),
            ("quantizer.input_dimension", self.quantizer.input_dimension),
            ("quantizer.output_dimension", self.quantizer.output_dimension),
        ):
            if value != d:
                problems.append(f"{key} = {value} differs from seanet.dimension = {d}")
        if list(transformer.get("output_dimensions", [d])) != [d]:
            problems.append(f"transformer.output_dimensions = {transformer['output_dimensions']} is not [{d}]")
        if self.transformer.d_model % self.transformer.num_heads:
            problems.append("transformer.d_model is not a multiple of num_heads")
        if not 1 <= self.num_codebooks <= self.quantizer.n_q:
            problems.append(f"num_codebooks = {self.num_codebooks} is not in 1..quantizer.n_q = {self.quantizer.n_q}")
        if self.resample_stride < 2 or self.resample_stride * self.seanet.hop_length != self.frame_size:
            problems.append(
                f"frame size {self.frame_size} is not a multiple (>= 2) of the SEANet hop {self.seanet.hop_length}"
            )
        if "frame_size" in cfg and int(cfg["frame_size"]) != self.frame_size:
            problems.append(f"frame_size = {cfg['frame_size']} but sample_rate / frame_rate = {self.frame_size}")
        if problems:
            raise CheckpointError("Mimi config is not a supported codec: " + "; ".join(problems))


def _section(cfg: dict, key: str) -> dict:
    value = cfg.get(key)
    if not isinstance(value, dict):
        raise CheckpointError(
            f"Mimi config needs a {key!r} section of keyword arguments; use the config that came with the checkpoint"
        )
    return value


def _expect(section: dict, where: str, key: str, allowed: tuple, default: object = None) -> None:
    value = section.get(key, default)
    if value not in allowed:
        raise CheckpointError(
            f"Mimi config {where}.{key} = {value!r} is not supported (ppchat builds {' or '.join(map(repr, allowed))})"
        )


def fold_weight_norm(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Replace each `X.weight_g`/`X.weight_v` pair (`manifest.weight_norm_pairs`) by
    `X.weight = g * v / ||v||` (norm over all axes but 0)."""
    pairs = manifest.weight_norm_pairs(weights)
    paired = {key for pair in pairs.values() for key in pair}
    out = {key: value for key, value in weights.items() if key not in paired}
    for key, (g_key, v_key) in pairs.items():
        v = weights[v_key].astype(mx.float32)
        norm = mx.sqrt(mx.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
        out[key] = weights[g_key].astype(mx.float32).reshape((-1,) + (1,) * (v.ndim - 1)) * v / norm
    return out


@dataclass(frozen=True)
class _ReferenceParam:
    """One parameter of this module, the reference state-dict entries it is made from and how."""

    name: str
    sources: tuple[str, ...]
    convert: Callable[..., mx.array]


def _same(x: mx.array) -> mx.array:
    return x


def _reference_param(path: str, leaf: str, module: nn.Module, shape: Shape) -> _ReferenceParam:
    """Where parameter `path.leaf` (of `module`, with MLX shape `shape`) lives in the reference checkpoint."""
    name = f"{path}.{leaf}"
    if isinstance(module, StreamingConv1d):
        # SEANet convs are wrapped twice (StreamingConv1d.conv.conv); `downsample` adds one more level.
        prefix = "downsample.conv.conv.conv" if path == "downsample" else f"{path}.conv.conv"
        if leaf == "bias":
            return _ReferenceParam(name, (f"{prefix}.bias",), _same)
        return _ReferenceParam(name, (f"{prefix}.weight",), lambda w: w.transpose(0, 2, 1))
    if isinstance(module, StreamingConvTranspose1d):
        prefix = "upsample.convtr.convtr.convtr" if path == "upsample" else f"{path}.convtr.convtr"
        if leaf == "bias":
            return _ReferenceParam(name, (f"{prefix}.bias",), _same)
        # PyTorch [in, out/groups, k] -> MLX [out, k, in/groups], group by group.
        out_ch, k, in_per_group = shape
        g = module.groups

        def convtr(w: mx.array) -> mx.array:
            return w.reshape(g, in_per_group, out_ch // g, k).transpose(0, 2, 3, 1).reshape(out_ch, k, in_per_group)

        return _ReferenceParam(name, (f"{prefix}.weight",), convtr)
    if isinstance(module, EuclideanCodebook):
        rvq, _, index = path.rsplit(".", 2)
        base = f"{rvq}.vq.layers.{index}._codebook"

        def codebook(embedding_sum: mx.array, cluster_usage: mx.array) -> mx.array:
            return embedding_sum / mx.maximum(cluster_usage, 1e-5)[:, None]

        return _ReferenceParam(name, (f"{base}.embedding_sum", f"{base}.cluster_usage"), codebook)
    if path.startswith("quantizer."):
        # The RVQ projections are 1x1 Conv1d in the reference.
        return _ReferenceParam(name, (name,), lambda w: w[:, :, 0])
    if path.startswith(("encoder_transformer.", "decoder_transformer.")):
        top, rest = name.split(".", 1)
        source = f"{top}.transformer.{rest}".replace("self_attn.in_proj.weight", "self_attn.in_proj_weight")
        return _ReferenceParam(name, (source,), _same)
    raise TypeError(f"no reference mapping for parameter {name}")


_ENCODER_PARTS = ("encoder", "encoder_transformer", "downsample")
_DECODER_PARTS = ("upsample", "decoder_transformer", "decoder")


class Mimi(nn.Module):
    """Mimi codec with a streaming (`encode_step`/`decode_step`, per 80 ms frame) and a whole-signal API.

    With `compile_streaming` (default: on a GPU) each streaming direction runs as one `mx.compile`d
    graph whose streaming state (conv buffers, transposed-conv tails, KV rings, positions) is passed in
    and returned explicitly, so a frame costs a replay of the compiled graph, not a Python trace.
    """

    def __init__(self, config: MimiConfig, compile_streaming: bool | None = None) -> None:
        super().__init__()
        self.compile_streaming = mx.default_device() == mx.gpu if compile_streaming is None else compile_streaming
        self.config = config
        self.frame_size = config.frame_size
        self.sample_rate = config.sample_rate
        self.num_codebooks = config.num_codebooks
        dim, stride = config.seanet.dimension, config.resample_stride
        self.encoder = SEANetEncoder(config.seanet)
        self.encoder_transformer = MimiTransformer(config.transformer)
        self.downsample = StreamingConv1d(dim, dim, 2 * stride, stride=stride, bias=False, pad_mode="replicate")
        self.quantizer = SplitResidualVectorQuantizer(config.quantizer, config.num_codebooks)
        self.upsample = StreamingConvTranspose1d(
            dim, dim, 2 * stride, stride=stride, groups=dim if config.upsample_depthwise else 1, bias=False
        )
        self.decoder_transformer = MimiTransformer(config.transformer)
        self.decoder = SEANetDecoder(config.seanet)

    # --- whole signal -------------------------------------------------------------------------

    def encode(self, pcm: mx.array) -> mx.array:
        """PCM `[B, 1, T]` -> codes `[B, num_codebooks, ceil(T / frame_size)]` int32, as the reference
        outside streaming: each conv pads the right end to complete its last window. Leaves the
        streaming state alone."""
        latent = self.encoder(pcm.transpose(0, 2, 1))
        latent = self.downsample(self.encoder_transformer(latent))
        return self.quantizer.encode(latent)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, num_codebooks, F]` (each in `[0, bins)`) -> PCM `[B, 1, F * frame_size]`.
        Leaves the streaming state alone."""
        latent = self.decoder_transformer(self.upsample(self.quantizer.decode(codes)))
        return self.decoder(latent).transpose(0, 2, 1)

    # --- streaming ----------------------------------------------------------------------------

    def reset(self, batch_size: int = 1) -> None:
        """Start new streams: clears conv buffers, padding, transposed-conv tails, KV rings and positions."""
        for part in (
            self.encoder,
            self.encoder_transformer,
            self.downsample,
            self.upsample,
            self.decoder_transformer,
            self.decoder,
        ):
            part.reset(batch_size)

    def encode_step(self, pcm: mx.array) -> mx.array:
        """Next PCM frame(s) `[B, 1, n * frame_size]` of the stream -> codes `[B, num_codebooks, n]` int32."""
        if pcm.ndim != 3 or pcm.shape[2] == 0 or pcm.shape[2] % self.frame_size:
            raise ValueError(f"encode_step takes PCM [B, 1, n * {self.frame_size}], got shape {pcm.shape}")
        return self._run_streaming("encode", _ENCODER_PARTS, self._encode_graph, pcm)

    def decode_step(self, codes: mx.array) -> mx.array:
        """Next code frame(s) `[B, num_codebooks, n]` of the stream -> PCM `[B, 1, n * frame_size]`,
        with no added delay."""
        if codes.ndim != 3 or codes.shape[1] != self.num_codebooks or codes.shape[2] == 0:
            raise ValueError(f"decode_step takes codes [B, {self.num_codebooks}, n], got shape {codes.shape}")
        return self._run_streaming("decode", _DECODER_PARTS, self._decode_graph, codes)

    def streaming_state(self) -> list[mx.array]:
        """Every streaming state array (to evaluate with a frame's output, so none stays lazy)."""
        return self._get_state(_ENCODER_PARTS + _DECODER_PARTS)

    def set_streaming_state(self, state: list[mx.array]) -> None:
        """Put back what `streaming_state()` returned (e.g. a batch's streams around a one-row encode)."""
        self._set_state(_ENCODER_PARTS + _DECODER_PARTS, state)

    def reset_row(self, row: int) -> None:
        """Start a new stream in row `row` of a batch of streams; the other rows go on untouched.
        (Every state array has the row first; each row keeps its own positions.)"""
        batch = self.streaming_state()
        self.reset(1)
        fresh = self.streaming_state()
        for array, new in zip(batch, fresh):
            array[row : row + 1] = new
        self.set_streaming_state(batch)

    def _encode_graph(self, state: list[mx.array], pcm: mx.array) -> tuple[mx.array, list[mx.array]]:
        self._set_state(_ENCODER_PARTS, state)
        latent = self.encoder.step(pcm.transpose(0, 2, 1))
        latent = self.downsample.step(self.encoder_transformer.step(latent))
        return self.quantizer.encode(latent), self._get_state(_ENCODER_PARTS)

    def _decode_graph(self, state: list[mx.array], codes: mx.array) -> tuple[mx.array, list[mx.array]]:
        self._set_state(_DECODER_PARTS, state)
        latent = self.decoder_transformer.step(self.upsample.step(self.quantizer.decode(codes)))
        return self.decoder.step(latent).transpose(0, 2, 1), self._get_state(_DECODER_PARTS)

    def _run_streaming(self, name: str, parts: tuple[str, ...], graph, x: mx.array) -> mx.array:
        """Run `graph` (state, x) -> (y, state), compiled when enabled, and store the new state."""
        fn = graph
        if self.compile_streaming:
            # Kept out of the module tree (a dict attribute would become a child of this module).
            compiled = self.__dict__.setdefault("_compiled_graphs", {})
            if name not in compiled:
                compiled[name] = mx.compile(graph)
            fn = compiled[name]
        state = self._get_state(parts)
        try:
            y, state = fn(state, x)
        finally:
            # A trace that raised must not leave placeholder arrays in the modules.
            self._set_state(parts, state)
        return y

    def _state_slots(self, parts: tuple[str, ...]) -> list[tuple[nn.Module, str]]:
        """(module, attribute) of every streaming state array under `parts`, in a fixed order."""
        cached = self.__dict__.setdefault("_slot_cache", {})
        if parts in cached:
            return cached[parts]
        slots = cached[parts] = []
        for part in parts:
            for _, module in getattr(self, part).named_modules():
                slots += [(module, key) for key, value in module.items() if key.startswith("_") and isinstance(value, mx.array)]
        return slots

    def _get_state(self, parts: tuple[str, ...]) -> list[mx.array]:
        return [module[key] for module, key in self._state_slots(parts)]

    def _set_state(self, parts: tuple[str, ...], state: list[mx.array]) -> None:
        for (module, key), value in zip(self._state_slots(parts), state):
            setattr(module, key, value)

    # --- reference checkpoint -----------------------------------------------------------------

    def _reference_params(self) -> list[_ReferenceParam]:
        modules = dict(self.named_modules())
        params = []
        for name, value in tree_flatten(self.parameters()):
            path, leaf = name.rsplit(".", 1)
            params.append(_reference_param(path, leaf, modules[path], tuple(value.shape)))
        return params

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Reference state dict -> this module's parameters (float32, MLX layouts, codebooks precomputed).

        Reference entries it does not read (`_initialized` flags, codebooks beyond `num_codebooks`) are
        dropped; keys the reference does not have are passed through for strict loading to report.
        """
        weights = fold_weight_norm(weights)
        params = self._reference_params()
        known = manifest.mimi_reference_shapes(self.config.reference_config())
        out = {k: v for k, v in weights.items() if k not in known}
        for p in params:
            if all(s in weights for s in p.sources):
                out[p.name] = p.convert(*(weights[s].astype(mx.float32) for s in p.sources))
        return out

    def load_reference_weights(self, weights: dict[str, mx.array]) -> None:
        """Load a reference state dict (e.g. `mx.load` of the Mimi safetensors), strictly.

        The keys and shapes are checked against `manifest.mimi_reference_shapes` of this codec's
        config; those no parameter is made from may be absent. Raises CheckpointError naming every
        missing, unexpected or wrongly shaped reference key.
        """
        weights = fold_weight_norm(weights)
        expected = manifest.mimi_reference_shapes(self.config.reference_config())
        read = {s for p in self._reference_params() for s in p.sources}
        problems = shape_problems(weights, expected, optional=expected.keys() - read)
        if problems:
            raise CheckpointError(
                "Mimi weights do not match the Mimi config: "
                + "; ".join(problems)
                + ". Use the codec checkpoint that belongs to this model, unmodified."
            )
        try:
            self.load_weights(list(self.sanitize(weights).items()), strict=True)
        except ValueError as err:
            raise CheckpointError(f"Mimi weights could not be loaded: {err}") from None
        mx.eval(self.parameters())
