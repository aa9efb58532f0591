"""A Qwen3-ASR checkpoint with random weights, in mlx-qwen3-asr's own format.

No real ASR weights can be fetched here, so the tests (tiny) and the captions benchmark
(the 0.6B shapes, for a realistic load) build one: the library's config classes and
model, its parameters saved with safetensors, and a byte-level BPE vocabulary that puts
the special tokens at the ids the library expects. It transcribes anything into random
words; only its timing, plumbing and cost are meaningful.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

# The special tokens at the ids Qwen3-ASR's tokenizer uses (the library hard-codes
# <|im_start|>, <|im_end|> and <|endoftext|>; the audio ones it looks up by name).
SPECIAL_TOKENS = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151669: "<|audio_start|>",
    151670: "<|audio_end|>",
    151676: "<|audio_pad|>",
    151704: "<asr_text>",
}
_LETTERS = "etaoinshrdlucmfwyp"


def _word(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, len(_LETTERS))
        out += _LETTERS[r]
        if not n:
            return out


def _config(size: str):
    from mlx_qwen3_asr.config import AudioEncoderConfig, Qwen3ASRConfig, TextDecoderConfig

    if size == "0.6b":
        return Qwen3ASRConfig.for_0_6b()
    if size != "tiny":
        raise ValueError(f"unknown size {size!r}")
    return Qwen3ASRConfig(
        audio_config=AudioEncoderConfig(
            encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32, output_dim=64,
            downsample_hidden_size=8,
        ),
        # The real vocabulary size: the prompt uses token ids up to 151704.
        text_config=TextDecoderConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, rope_scaling={"mrope_section": [4, 2, 2]},
        ),
    )


def build_random_asr(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write config.json, model.safetensors, vocab.json, merges.txt, tokenizer_config.json."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_qwen3_asr.model import Qwen3ASRModel
    from mlx_qwen3_asr.tokenizer import _bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(size)
    mx.random.seed(seed)
    model = Qwen3ASRModel(config)
    params = dict(tree_flatten(model.parameters()))
    if config.text_config.tie_word_embeddings:
        params.pop("lm_head.weight", None)  # the loader ties it back to the embedding
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.float16) for k, v in params.items()})
    (folder / "config.json").write_text(json.dumps(asdict(config)))

    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    space = byte_chars[ord(" ")]
    for token_id in range(256, min(SPECIAL_TOKENS)):
        # Every ordinary id decodes to a word (most with a leading space), so random
        # weights still produce visible text.
        vocab.setdefault((space if token_id % 4 else "") + _word(token_id), token_id)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): {"content": text, "special": True} for i, text in SPECIAL_TOKENS.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added, "eos_token": "<|im_end|>"}))
    return folder
