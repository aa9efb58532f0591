"""CLI: `download` (fetch the real model and optionally pre-convert it) and `demo-model`."""

from __future__ import annotations

import argparse

from ppchat.constants import DEPFORMER_STEPS, REPO_ID


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download PersonaPlex 7B from Hugging Face (needs HF_TOKEN)",
        description=f"Download {REPO_ID} (gated: accept the licence on its Hugging Face page "
                    "and export HF_TOKEN) into the Hugging Face cache, with progress bars. Files already in "
                    "the cache are not fetched again. With --quantize, also convert the LM once so that the "
                    "first `ppchat --quantize N` starts fast.",
    )
    p.add_argument("--repo", default=None, help=f"Hugging Face repo id (default {REPO_ID})")
    p.add_argument("--revision", default=None, help="branch, tag or commit of the repo")
    p.add_argument("--quantize", choices=("4", "8"), default=None, help="also build the 4- or 8-bit LM cache")
    p.add_argument("--group-size", type=int, default=None, help="quantisation group size (default 32 for 4 bit, 64 for 8 bit)")
    p.add_argument("--asr", action="store_true",
                   help="instead, download the speech recogniser for `ppchat transcribe` and `--captions` "
                        "(Qwen/Qwen3-ASR-0.6B unless --asr-model says otherwise; no token needed)")
    p.add_argument("--asr-model", default=None, metavar="REPO", help="with --asr: which Qwen3-ASR repo to download")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "demo-model",
        help="(re)build the built-in tiny demo model and print where it is",
        description="The demo model has the real PersonaPlex architecture at a tiny size with random weights, "
                    "generated deterministically. It lets ppchat run end to end without the real weights.",
    )
    p.set_defaults(func=cmd_demo_model)


def cmd_download(args) -> int:
    if args.asr or args.asr_model:
        return _download_asr(args)
    from ppchat import paths
    from ppchat.models import hub
    from ppchat.models.checkpoint import open_checkpoint_dir
    from ppchat.models.loader import load_model, resolve_voices_dir

    repo = args.repo or REPO_ID
    snapshot = hub.download_model(repo, revision=args.revision)
    ckpt = open_checkpoint_dir(snapshot)
    ckpt.validate_weights()
    voices = resolve_voices_dir(ckpt, paths.cache_dir())
    print(f"ppchat: {repo} is ready in {snapshot}" + (f" (voices in {voices})" if voices else ""))
    web_ui = hub.download_web_ui(repo, revision=args.revision)
    print(f"ppchat: NVIDIA's web UI for `ppchat serve`: {web_ui}" if web_ui else
          f"ppchat: {repo} has no {hub.WEB_UI_ARCHIVE} (NVIDIA's web UI); `ppchat serve --static DIR` can serve one")
    if args.quantize:
        model = load_model(snapshot, quantize=int(args.quantize), group_size=args.group_size, depformer_steps=DEPFORMER_STEPS)
        where = model.info.quantized_cache
        print(f"ppchat: {model.info.quantization} weights cached in {where}")
    print("ppchat: start talking with `ppchat" + (f" --quantize {args.quantize}`" if args.quantize else "`"))
    return 0


def _download_asr(args) -> int:
    from ppchat.asr.model_files import DEFAULT_ASR_MODEL, download

    repo = args.asr_model or DEFAULT_ASR_MODEL
    folder = download(repo, revision=args.revision)
    print(f"ppchat: {repo} is ready in {folder}")
    print("ppchat: transcribe a session with `ppchat transcribe last`, or talk with live captions: `ppchat --captions`")
    return 0


def cmd_demo_model(args) -> int:
    from ppchat import paths
    from ppchat.models.demo import ensure_demo_model

    print(ensure_demo_model(paths.cache_dir()))
    return 0
