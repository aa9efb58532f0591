"""PersonaPlex's LM: input embeddings, temporal transformer, text head and depformer (spec §2.3-2.5, §4).

Weights come in the reference PyTorch layout (`model.safetensors`, spec §3.1); `LM.sanitize` maps them
onto this module tree (spec §3.3) and `LM.load_reference_weights` checks the key set and shapes first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ppchat.constants import REPO_ID
from ppchat.errors import CheckpointError
from ppchat.models import manifest
from ppchat.models.depformer import Depformer
from ppchat.models.kv_cache import RingKVCache
from ppchat.models.layers import RMSNorm, pick, project
from ppchat.models.manifest import LM_FILE, gating_hidden_dim, shape_problems
from ppchat.models.transformer import Transformer

# What this implementation reproduces; any other value in a reference config is refused.
_REQUIRED_SETTINGS = {
    "norm": "rms_norm_f32",
    "gating": "silu",
    "depformer_gating": "silu",
    "positional_embedding": "rope",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "depformer_multi_linear": True,
    "layer_scale": None,
    "depformer_layer_scale": None,
    "causal": True,
}


def _feedforward(dim: int, hidden: int) -> int:
    """A reference feed-forward width whose gated hidden width is `hidden`."""
    width = 4 * dim if hidden == gating_hidden_dim(dim, 4 * dim) else -(-3 * hidden // 2)
    if gating_hidden_dim(dim, width) != hidden:
        raise ValueError(f"no reference feed-forward width gives a gated width of {hidden} at dim {dim}")
    return width


@dataclass(frozen=True)
class LMConfig:
    """Hyper-parameters of the LM. Hidden sizes are the gated FFN widths (after the reference's rounding)."""

    dim: int
    num_heads: int
    num_layers: int
    hidden: int
    context: int
    max_period: float
    text_card: int
    card: int
    n_q: int
    dep_q: int
    delays: tuple[int, ...]
    depformer_dim: int
    depformer_num_heads: int
    depformer_num_layers: int
    depformer_hidden: int
    text_padding_id: int
    norm_eps: float = 1e-8

    @property
    def num_codebooks(self) -> int:
        """Streams per column: text + n_q audio."""
        return self.n_q + 1

    @property
    def audio_init_token(self) -> int:
        return self.card

    @property
    def text_init_token(self) -> int:
        return self.text_card

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @classmethod
    def from_reference(cls, lm_kwargs: Mapping) -> LMConfig:
        """Build from the reference `LMModel(**lm_kwargs)` arguments (fixture `config.json`, manifest)."""
        try:
            for name, wanted in _REQUIRED_SETTINGS.items():
                if lm_kwargs.get(name, wanted) != wanted:
                    raise CheckpointError(
                        f"LM config: {name}={lm_kwargs[name]!r} is not supported (PersonaPlex uses {wanted!r}); "
                        "use the PersonaPlex 7B config"
                    )
            if lm_kwargs.get("existing_text_padding_id") is None:
                raise CheckpointError("LM config: existing_text_padding_id must be set (PersonaPlex uses 3)")
            dim = int(lm_kwargs["dim"])
            depformer_dim = int(lm_kwargs["depformer_dim"])
            hidden_scale = float(lm_kwargs.get("hidden_scale", 4))
            dep_ff = lm_kwargs.get("depformer_dim_feedforward") or int(hidden_scale * depformer_dim)
            config = cls(
                dim=dim,
                num_heads=int(lm_kwargs["num_heads"]),
                num_layers=int(lm_kwargs["num_layers"]),
                hidden=gating_hidden_dim(dim, int(lm_kwargs.get("dim_feedforward") or hidden_scale * dim)),
                context=int(lm_kwargs["context"]),
                max_period=float(lm_kwargs.get("max_period", 10000)),
                text_card=int(lm_kwargs["text_card"]),
                card=int(lm_kwargs["card"]),
                n_q=int(lm_kwargs["n_q"]),
                dep_q=int(lm_kwargs["dep_q"]),
                delays=tuple(int(d) for d in lm_kwargs["delays"]),
                depformer_dim=depformer_dim,
                depformer_num_heads=int(lm_kwargs["depformer_num_heads"]),
                depformer_num_layers=int(lm_kwargs["depformer_num_layers"]),
                depformer_hidden=gating_hidden_dim(depformer_dim, int(dep_ff)),
                text_padding_id=int(lm_kwargs["existing_text_padding_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"LM config is incomplete or malformed ({exc!r}); expected reference lm_kwargs") from exc
        if len(config.delays) != config.num_codebooks:
            raise CheckpointError(f"LM config: {len(config.delays)} delays for {config.num_codebooks} streams")
        if not 0 < config.dep_q <= config.n_q:
            raise CheckpointError(f"LM config: dep_q={config.dep_q} must be in 1..n_q={config.n_q}")
        return config

    def reference_kwargs(self) -> dict:
        """Reference `lm_kwargs` that build this network: the settings this implementation requires
        and feed-forward widths that round to `hidden` / `depformer_hidden` (any such width gives
        the same weights). `manifest.lm_reference_shapes` of it is the one key → shape set."""
        return {
            **_REQUIRED_SETTINGS,
            "dim": self.dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
            "dim_feedforward": _feedforward(self.dim, self.hidden),
            "context": self.context, "max_period": self.max_period,
            "text_card": self.text_card, "card": self.card, "n_q": self.n_q, "dep_q": self.dep_q,
            "delays": list(self.delays),
            "depformer_dim": self.depformer_dim, "depformer_num_heads": self.depformer_num_heads,
            "depformer_num_layers": self.depformer_num_layers,
            "depformer_dim_feedforward": _feedforward(self.depformer_dim, self.depformer_hidden),
            "existing_text_padding_id": self.text_padding_id,
        }

    @classmethod
    def personaplex_7b(cls) -> LMConfig:
        """The released PersonaPlex 7B (spec §2.3-2.5): the manifest's reference config."""
        return cls.from_reference(manifest.personaplex_lm_config()["lm_kwargs"])


class LM(nn.Module):
    """Temporal transformer + depformer. `depformer_steps` builds only the first steps (default dep_q)."""

    def __init__(self, config: LMConfig, dtype: mx.Dtype = mx.float32, depformer_steps: int | None = None):
        super().__init__()
        steps = config.dep_q if depformer_steps is None else depformer_steps
        if not 0 < steps <= config.dep_q:
            raise ValueError(f"depformer_steps must be in 1..{config.dep_q}, got {steps}")
        self.config = config
        self.dtype = dtype
        # The 17 input tables (`text_emb`, then `emb.0..15`) stacked in one, so that a column's 17
        # tokens are looked up by one gather (four ops for a quantised table) instead of 17.
        self.input_emb = nn.Embedding(config.text_card + 1 + config.n_q * (config.card + 1), config.dim)
        self.transformer = Transformer(
            config.dim,
            config.num_heads,
            config.num_layers,
            config.hidden,
            config.context,
            config.max_period,
            config.norm_eps,
        )
        self.out_norm = RMSNorm(config.dim, config.norm_eps)
        self.text_linear = nn.Linear(config.dim, config.text_card, bias=False)
        self.depformer = Depformer(
            in_dim=config.dim,
            dim=config.depformer_dim,
            num_heads=config.depformer_num_heads,
            num_layers=config.depformer_num_layers,
            hidden=config.depformer_hidden,
            steps=steps,
            kv_capacity=config.dep_q,
            card=config.card,
            text_card=config.text_card,
            norm_eps=config.norm_eps,
        )
        if dtype != mx.float32:
            self.set_dtype(dtype)

    # ----------------------------------------------------------------------------------- weights

    def sanitize(self, weights: Mapping[str, mx.array]) -> dict[str, mx.array]:
        """Map reference state-dict keys (spec §3.1) to this module's parameters (spec §3.3).

        Alphas [1,1,D] become norm weights [D]; the depformer's fused per-step projections are
        split `dep_q`-way, step-major, and its per-step input projections joined into one, as are the
        17 input embedding tables;
        steps beyond the built `depformer.steps` are dropped.
        """
        steps_in_file = self.config.dep_q
        built = self.depformer.steps
        out: dict[str, mx.array] = {}
        input_projs: dict[int, mx.array] = {}
        tables: dict[int, mx.array] = {}  # stream -> input embedding table (0: text)
        for key, value in weights.items():
            parts = key.split(".")
            if key.endswith(".alpha"):
                out[key[: -len("alpha")] + "weight"] = value.reshape(-1)
            elif key.startswith("depformer.layers.") and parts[3] == "self_attn":
                base = ".".join(parts[:4])
                name = "in_proj" if parts[4] == "in_proj_weight" else "out_proj"
                for step, chunk in enumerate(mx.split(value, steps_in_file, axis=0)[:built]):
                    out[f"{base}.{name}.{step}.weight"] = chunk
            elif key.startswith("depformer.layers.") and parts[3] == "gating":
                if int(parts[4]) < built:
                    out[key] = value
            elif key.startswith("transformer.layers.") and parts[4] == "in_proj_weight":
                out[".".join(parts[:4]) + ".in_proj.weight"] = value
            elif parts[0] == "emb":
                tables[1 + int(parts[1])] = value
            elif parts[0] == "text_emb":
                tables[0] = value
            elif parts[0] == "depformer_in":
                if int(parts[1]) < built:
                    input_projs[int(parts[1])] = value
            elif parts[0] == "linears":
                if int(parts[1]) < built:
                    out[f"depformer.heads.{parts[1]}.weight"] = value
            elif parts[0] == "depformer_emb":
                if int(parts[1]) < built - 1:
                    out[f"depformer.audio_embs.{parts[1]}.weight"] = value
            elif parts[0] == "depformer_text_emb":
                out["depformer.text_emb.weight"] = value
            else:
                out[key] = value
        if tables:  # one table, text then audio 0..15 (`LM.input_emb`)
            out["input_emb.weight"] = mx.concatenate([tables[s] for s in sorted(tables)], axis=0)
        if input_projs:  # one [steps * depformer_dim, dim] matrix, step-major (`Depformer.input_proj`)
            out["depformer.input_proj.weight"] = mx.concatenate([input_projs[s] for s in sorted(input_projs)], axis=0)
        return out

    def load_reference_weights(self, weights: Mapping[str, mx.array], source: str = "LM checkpoint") -> None:
        """Strictly load a reference state dict, cast to this model's dtype.

        Raises `CheckpointError` naming every missing, unexpected or mis-shaped key, and refuses a
        checkpoint whose depformer has fewer steps than `dep_q` (Kyutai's 8-step Moshi layout).
        """
        kwargs = self.config.reference_kwargs()
        expected = manifest.lm_reference_shapes(kwargs)
        manifest.refuse_short_depformer(weights, kwargs, source)
        problems = shape_problems(weights, expected)
        if problems:
            raise CheckpointError(
                f"{source} does not match the PersonaPlex LM layout: " + "; ".join(problems)
                + f". Use the unmodified {LM_FILE} of {REPO_ID}."
            )
        sanitized = {k: v.astype(self.dtype) for k, v in self.sanitize(weights).items()}
        self.load_weights(list(sanitized.items()), strict=True)

    # ----------------------------------------------------------------------------------- forward

    def make_cache(self, batch_size: int = 1, per_row: bool = False, bits: int | None = None) -> list[RingKVCache]:
        """Fresh KV caches for the temporal transformer (positions start at 0); `per_row`: one
        position counter per row, for a batch of conversations; `bits=8`: 8-bit rings (`RingKVCache`;
        a loaded model's choice is `ModelInfo.kv_bits`)."""
        return self.transformer.make_cache(batch_size, self.dtype, bits, per_row)

    def embed_codes(self, tokens: mx.array) -> mx.array:
        """tokens [B, 17, T] (text, then audio streams 1..16) -> input embeddings [B, T, dim].

        Summed in the reference order: audio 0..15, then text (spec §4.1); -1 gives a zero row.
        """
        c = self.config
        # Stream s's rows start at its table's offset in `input_emb` (text first, as in `tokens`).
        starts = mx.array([0] + [c.text_card + 1 + q * (c.card + 1) for q in range(c.n_q)], dtype=mx.int32)
        # The -1 handling of `embed_tokens`, done once for all 17 streams rather than per stream (a -1
        # looks up a row of the previous table, or the last one, and is replaced by zeros).
        rows = self.input_emb(tokens + starts[:, None])
        rows = mx.where(tokens[..., None] >= 0, rows, mx.zeros((), dtype=rows.dtype))
        x = pick(rows, 1, axis=1)
        for stream in range(2, c.num_codebooks):
            x = x + pick(rows, stream, axis=1)
        return x + pick(rows, 0, axis=1)

    def forward_embeddings(self, x: mx.array, cache: list[RingKVCache]) -> tuple[mx.array, mx.array]:
        """Run the transformer on x [B, T, dim] at the cache's next positions.

        Returns (h = out_norm(output) [B, T, dim], float32 text logits [B, T, text_card]); `h` is the
        depformer's input too (spec pitfall 8).
        """
        h = self.hidden(x, cache)
        return h, self.text_head(h).astype(mx.float32)

    def hidden(self, x: mx.array, cache: list[RingKVCache]) -> mx.array:
        """h = out_norm(transformer(x)) [B, T, dim] at the cache's next positions."""
        return self.out_norm(self.transformer(x.astype(self.dtype), cache))

    def text_head(self, h: mx.array) -> mx.array:
        """Text logits of h, in the model's dtype (sampling takes them so; `forward_embeddings` casts)."""
        return project(self.text_linear, h)

    def prefill(self, x: mx.array, cache: list[RingKVCache]) -> None:
        """Only fill the KV caches with x [B, T, dim] (no head): evaluate `cache` state afterwards."""
        self.transformer(x.astype(self.dtype), cache)
