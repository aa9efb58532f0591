"""Build ready-to-run models from a checkpoint source, with a cache of quantised LM weights.

Sources: "demo" (the built-in random model), a model directory (hub snapshot or bundle),
or a Hugging Face repo id. Quantisation follows the Kyutai MLX port (spec §8.2): every
Linear and Embedding of the LM, group 32 for 4 bit and 64 for 8 bit; Mimi stays float32. A
quantised LM also keeps its temporal KV cache in 8 bits (`kv_bits`, see `RingKVCache`): the bf16
cache is 1.57 GB of the 7B's memory, a quarter of a q4 model.
The first quantised start converts and stores the result; later starts load it directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from ppchat import paths
from ppchat.atomic import replacing
from ppchat.errors import CheckpointError
from ppchat.models import hub
from ppchat.models.checkpoint import CheckpointDir, open_checkpoint_dir, read_safetensors
from ppchat.models.demo import ensure_demo_model
from ppchat.models.lm import LM, LMConfig
from ppchat.models.mimi import Mimi, MimiConfig
from ppchat.models.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

DEFAULT_GROUP_SIZE = {4: 32, 8: 64}
_CACHE_FORMAT = "ppchat-quantized-v2"  # v2: fused depformer input projection and input tables
_DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


@dataclass(frozen=True)
class ModelInfo:
    """How the model was loaded, for the status line and logs."""

    source: str
    is_demo: bool
    lm_dtype: str
    quantization: str  # "none", "q4" or "q8"
    group_size: int | None
    kv_bits: int | None  # 8: 8-bit KV cache; None: the LM dtype
    depformer_steps: int
    quantized_cache: Path | None  # the converted weights file, when quantised
    cache_hit: bool  # True when the quantised weights came from the cache
    load_seconds: float


@dataclass
class LoadedModel:
    mimi: Mimi
    lm: LM
    tokenizer: TextTokenizer
    config: CheckpointDir
    info: ModelInfo
    voices_dir: Path | None  # the preset voices, unpacked; None when the model ships none


def resolve_source(source: str | Path, cache_root: Path, allow_download: bool = True) -> CheckpointDir:
    """"demo", a model directory, or a hub repo id ("owner/name") → an opened checkpoint directory."""
    if str(source) == "demo":
        return open_checkpoint_dir(ensure_demo_model(cache_root))
    path = Path(source).expanduser()
    text = str(source)
    looks_like_repo = not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_repo:
        return open_checkpoint_dir(hub.download_model(text, offline=not allow_download))
    return open_checkpoint_dir(path)


def resolve_voices_dir(ckpt: CheckpointDir, cache_root: Path) -> Path | None:
    """The model's voice folder, unpacking voices.tgz on first use.

    Like the reference, it is unpacked next to the archive; if that folder is read-only
    (a shared hub cache), into ppchat's own cache instead.
    """
    if ckpt.voices_dir is not None or ckpt.voices_archive is None:
        return ckpt.voices_dir
    try:
        return hub.extract_voices(ckpt.voices_archive, ckpt.voices_archive.parent)
    except CheckpointError:
        if os.access(ckpt.voices_archive.parent, os.W_OK):
            raise  # a corrupt archive, not a permission problem
    where = hashlib.sha256(str(ckpt.voices_archive.resolve()).encode()).hexdigest()[:16]
    return hub.extract_voices(ckpt.voices_archive, cache_root / "hub-voices" / where)


def quantizable(group_size: int):
    def predicate(_path: str, module: nn.Module) -> bool:
        # Layers whose input width is not a multiple of the group cannot be quantised; they stay dense.
        return isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.shape[-1] % group_size == 0

    return predicate


def _cache_path(weights: Path, cache_root: Path, bits: int, group: int, dtype: str, steps: int) -> Path:
    """`<stem>-<path hash>-q<bits>g<group>s<steps>-<identity hash>`: a new identity (the
    file changed) gives a new name, while the prefix finds stale versions to delete."""
    resolved, stat = weights.resolve(), weights.stat()
    where = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    identity = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}|{_CACHE_FORMAT}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_root / "quantized" / f"{weights.stem}-{where}-q{bits}g{group}s{steps}-{digest}.safetensors"


def _save_quantized(lm: LM, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target, keep_suffix=True) as tmp:
        mx.save_safetensors(str(tmp), dict(tree_flatten(lm.parameters())), metadata={"format": _CACHE_FORMAT})
    # Older conversions of the same file at the same precision are dead weight (gigabytes each).
    for stale in target.parent.glob(f"{target.stem.rsplit('-', 1)[0]}-*.safetensors"):
        if stale != target:
            stale.unlink(missing_ok=True)


def _quantize_with_progress(lm: LM, bits: int, group: int, show_progress: bool) -> None:
    predicate = quantizable(group)
    targets = [name for name, module in lm.named_modules() if predicate(name, module)]
    nn.quantize(lm, group, bits, class_predicate=predicate)
    modules = dict(lm.named_modules())
    # The quantisation is lazy; evaluating layer by layer keeps the peak memory near one dense layer.
    for name in tqdm(targets, desc=f"Quantising LM to {bits} bit", unit="layer", disable=not show_progress):
        mx.eval(modules[name].parameters())
    mx.eval(lm.parameters())


def _load_lm(
    ckpt: CheckpointDir,
    cache_root: Path,
    quantize: int | None,
    group: int | None,
    steps: int | None,
    show_progress: bool,
) -> tuple[LM, Path | None, bool]:
    dtype_name = ckpt.lm_config.get("dtype", "float32")
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"{ckpt.root}: unsupported LM dtype {dtype_name!r} in its config")
    config = LMConfig.from_reference(ckpt.lm_config["lm_kwargs"])
    lm = LM(config, dtype=_DTYPES[dtype_name], depformer_steps=steps)
    if quantize is None:
        lm.load_reference_weights(read_safetensors(ckpt.lm_weights_path), source=str(ckpt.lm_weights_path))
        mx.eval(lm.parameters())
        return lm, None, False

    cached = _cache_path(ckpt.lm_weights_path, cache_root, quantize, group, dtype_name, lm.depformer.steps)
    if cached.is_file():
        try:
            nn.quantize(lm, group, quantize, class_predicate=quantizable(group))
            lm.load_weights(list(read_safetensors(cached, hint="it will be re-created").items()), strict=True)
            mx.eval(lm.parameters())
            return lm, cached, True
        except (CheckpointError, ValueError) as exc:
            log.warning("re-creating quantised weights: cached %s is unusable (%s)", cached, exc)
            lm = LM(config, dtype=_DTYPES[dtype_name], depformer_steps=steps)

    lm.load_reference_weights(read_safetensors(ckpt.lm_weights_path), source=str(ckpt.lm_weights_path))
    _quantize_with_progress(lm, quantize, group, show_progress)
    try:
        _save_quantized(lm, cached)
    except OSError as exc:  # a full or read-only cache only costs the conversion next time
        log.warning("could not store quantised weights in %s: %s", cached, exc)
        return lm, None, False
    return lm, cached, False


def resolve_kv_bits(kv_bits: int | None | str, quantize: int | None) -> int | None:
    """The KV cache precision: 8 or None (the LM dtype); "auto" is 8 for a quantised LM."""
    if kv_bits == "auto":
        return 8 if quantize else None
    if kv_bits not in (None, 8):
        raise CheckpointError(f"the KV cache is 8 bit or the LM dtype (16), not {kv_bits!r} bit")
    return kv_bits


def load_model(
    source: str | Path = "demo",
    quantize: int | None = None,
    group_size: int | None = None,
    cache_root: str | Path | None = None,
    *,
    depformer_steps: int | None = None,
    kv_bits: int | None | str = "auto",
    allow_download: bool = True,
    show_progress: bool = True,
) -> LoadedModel:
    """Open `source`, check its files, and build Mimi, the LM and the tokenizer.

    `quantize` is None (keep the checkpoint dtype), 4 or 8; `group_size` defaults to 32
    for 4 bit and 64 for 8 bit. `depformer_steps` builds only the first steps (8 is enough
    when user codebooks are always forced, spec §5.6). `cache_root` defaults to ppchat's
    cache folder and holds the demo model and quantised weights. `kv_bits` is 8 or None (the
    LM dtype); "auto" means 8 for a quantised LM.
    """
    started = time.perf_counter()
    if quantize not in (None, 4, 8):
        raise CheckpointError(f"quantisation must be 4 or 8 bit, not {quantize!r}")
    group = (group_size or DEFAULT_GROUP_SIZE[quantize]) if quantize else None
    root = Path(cache_root) if cache_root is not None else paths.cache_dir()

    ckpt = resolve_source(source, root, allow_download)
    ckpt.validate_weights()  # headers only: a wrong or truncated file fails before any allocation
    tokenizer = TextTokenizer(ckpt.tokenizer_path)
    text_card = ckpt.lm_config["lm_kwargs"]["text_card"]
    if tokenizer.vocab_size > text_card:
        raise CheckpointError(
            f"{ckpt.tokenizer_path} has {tokenizer.vocab_size} pieces but the LM only knows {text_card}; "
            "use the tokenizer that came with the model"
        )

    mimi = Mimi(MimiConfig.from_reference(ckpt.mimi_config))
    mimi.load_reference_weights(read_safetensors(ckpt.mimi_weights_path))
    mx.eval(mimi.parameters())

    lm, cached, hit = _load_lm(ckpt, root, quantize, group, depformer_steps, show_progress)
    kv_bits = resolve_kv_bits(kv_bits, quantize)
    info = ModelInfo(
        source=str(source),
        is_demo=ckpt.is_demo,
        lm_dtype=ckpt.lm_config.get("dtype", "float32"),
        quantization=f"q{quantize}" if quantize else "none",
        group_size=group,
        kv_bits=kv_bits,
        depformer_steps=lm.depformer.steps,
        quantized_cache=cached,
        cache_hit=hit,
        load_seconds=time.perf_counter() - started,
    )
    voices = resolve_voices_dir(ckpt, root)
    return LoadedModel(mimi=mimi, lm=lm, tokenizer=tokenizer, config=ckpt, info=info, voices_dir=voices)
