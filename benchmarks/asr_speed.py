"""How fast mlx-qwen3-asr transcribes on this machine, stage by stage.

For a clip of `--seconds` of audio: the mel features, the audio encoder, and the whole
`transcribe` call with the decode capped at `--tokens` tokens (random weights never stop
by themselves, so the cap makes runs comparable). Also one float32 matrix product in
MLX and in numpy, which tells MLX's CPU backend apart from the machine.

    .venv/bin/python benchmarks/asr_speed.py --asr 0.6b --seconds 2 --tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr", default="tiny", help="tiny, 0.6b (random weights, built once) or a Qwen3-ASR folder")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ppchat-captions-bench")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    import mlx.core as mx
    import mlx_qwen3_asr
    from mlx_qwen3_asr.audio import compute_features

    from ppchat.asr.random_model import build_random_asr

    folder = Path(args.asr) if args.asr not in ("tiny", "0.6b") else args.work / f"random-{args.asr}"
    if args.asr in ("tiny", "0.6b") and not (folder / "config.json").exists():
        build_random_asr(folder, size=args.asr)
    dtype = getattr(mx, args.dtype)
    (model, _), load_s = timed(lambda: mlx_qwen3_asr.load_model(str(folder), dtype=dtype))
    clip = (0.2 * np.sin(np.arange(round(16000 * args.seconds)) * 0.1)).astype(np.float32)
    (mel, lens), mel_s = timed(lambda: compute_features(clip))
    _, encoder_s = timed(lambda: mx.eval(model.audio_tower(mel.astype(dtype), lens)[0]))
    _, transcribe_s = timed(lambda: mlx_qwen3_asr.transcribe(clip, model=model, dtype=dtype, max_new_tokens=args.tokens))

    a = np.random.default_rng(0).standard_normal((1600, 4320)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((4320, 480)).astype(np.float32)
    _, numpy_s = timed(lambda: a @ b)
    ma, mb = mx.array(a), mx.array(b)
    mx.eval(ma, mb)
    _, mlx_s = timed(lambda: mx.eval(ma @ mb))
    gflop = 2 * 1600 * 4320 * 480 / 1e9
    result = {
        "asr": args.asr, "dtype": args.dtype, "clip_s": args.seconds, "max_new_tokens": args.tokens,
        "device": str(mx.default_device()), "load_s": round(load_s, 2), "mel_s": round(mel_s, 3),
        "audio_encoder_s": round(encoder_s, 2), "transcribe_s": round(transcribe_s, 2),
        "real_time_factor": round(transcribe_s / args.seconds, 2),
        "matmul_gflops": {"numpy": round(gflop / numpy_s, 1), "mlx": round(gflop / mlx_s, 1)},
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(sys.argv),
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
