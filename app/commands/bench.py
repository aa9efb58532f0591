"""`ppchat bench`: register the benchmark command (the work is in `engine.bench`)."""

from __future__ import annotations

import argparse
import json
import sys

QUANTIZE_CHOICES = {"4": 4, "8": 8, "none": None}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time the streaming step (Mimi encode + LM + depformer + Mimi decode)",
        description=(
            "Build a model, run the voice + role prompt prefill, then time the full streaming step "
            "frame by frame: per-phase latency percentiles, frames per second, real-time factor, "
            "prefill and load time, and memory. `--config 7b` builds the full-size PersonaPlex "
            "architecture with random weights, for machines without the checkpoint."
        ),
    )
    parser.add_argument("--model", default="demo", help="demo, a model folder or a hub repo id (default: demo)")
    parser.add_argument("--config", choices=("7b",), help="build this architecture with random weights instead of --model")
    parser.add_argument("--quantize", choices=tuple(QUANTIZE_CHOICES), default="none",
                        help="LM weights: 4 or 8 bit, or none (the checkpoint dtype; bf16 for --config)")
    parser.add_argument("--group-size", type=int, choices=(32, 64, 128),
                        help="quantisation group size (default: 32 for 4 bit, 64 for 8 bit)")
    parser.add_argument("--kv-bits", type=int, choices=(8, 16),
                        help="temporal KV cache precision (default: 8 for --quantize 4/8, else 16 = the LM dtype)")
    parser.add_argument("--frames", type=int, default=200, help="measured frames (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up frames before measuring (default 20)")
    parser.add_argument("--phases", action="store_true",
                        help="synchronise between phases to split encode/temporal/depformer/decode (slower)")
    parser.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=None,
                        help="mx.compile the step graphs (default: on a GPU only)")
    parser.add_argument("--voice-frames", type=int, default=125, help="voice prompt length in frames (default 125 = 10 s)")
    parser.add_argument("--conversations", type=int, default=0, metavar="N",
                        help="run N conversations in one batched step (each its own seed, voice and prompt; "
                             "default: one conversation, unbatched)")
    parser.add_argument("--churn", type=int, default=0, metavar="K",
                        help="with --conversations: every K frames one conversation leaves and a new one joins")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_run)


def bench_options(args: argparse.Namespace):
    """The `BenchOptions` that parsed `ppchat bench` arguments ask for (checked)."""
    from ppchat.engine.bench import BenchOptions
    from ppchat.errors import PPChatError

    if args.frames < 1 or args.warmup < 0 or args.voice_frames < 2:
        raise PPChatError("--frames must be at least 1, --warmup at least 0 and --voice-frames at least 2")
    if args.conversations < 0 or args.churn < 0 or (args.churn and not args.conversations):
        raise PPChatError("--conversations must be at least 1 (or left out), and --churn, at least 0, "
                          "needs --conversations")
    return BenchOptions(
        model=args.model,
        config=args.config,
        quantize=QUANTIZE_CHOICES[args.quantize],
        group_size=args.group_size,
        kv_bits="auto" if args.kv_bits is None else (None if args.kv_bits == 16 else 8),
        frames=args.frames,
        warmup=args.warmup,
        phases=args.phases,
        compile=args.compile,
        voice_frames=args.voice_frames,
        conversations=args.conversations,
        churn=args.churn,
    )


def run_options(options) -> tuple[dict, str]:
    """Run the benchmark `options` ask for: (JSON-ready result, human-readable report)."""
    if options.conversations:
        from ppchat.engine.bench_batch import format_batch_report, run_batch_bench

        result = run_batch_bench(options)
        return result, format_batch_report(result)
    from ppchat.engine.bench import format_report, run_bench

    result = run_bench(options)
    return result, format_report(result)


def _run(args: argparse.Namespace) -> int:
    result, report = run_options(bench_options(args))
    print(json.dumps(result, indent=1) if args.json else report)
    sys.stdout.flush()
    return 0
