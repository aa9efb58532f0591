"""Count the MLX operations of one live frame (Mimi encode → LM step → Mimi decode), on the CPU.

The count depends on the code, not on the machine: it is the number of primitive nodes in the lazy
graph that one frame evaluates (`mx.export_to_dot`), per phase and by primitive. On a GPU each
primitive is about one kernel launch (fewer where `mx.compile` fuses elementwise ones), and host
dispatch per kernel is what bounds the frame at batch 1 (BENCHMARKS.md), so fewer operations speed
every backend (Apple Silicon included). With `--compiled` the graph is built through the
`mx.compile`d step functions, and the count is of what their replay launches (fused elementwise
groups count once). A Concatenate is one operation but, on a GPU, one copy kernel per piece (MLX
0.32's `concatenate_gpu`), so the pieces are counted too ("concatenated pieces"; on the CPU the q4
embedding's dequantisation adds concatenations that a GPU does in one kernel).

The model is the PersonaPlex 7B layout — 32 temporal layers, 6 depformer layers, 8 depformer steps,
17 streams, the real Mimi — with thin widths (the op count does not depend on them), random weights.

    python benchmarks/op_count.py [--compiled] [--conversations N] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np

# Primitives that only make a view (no kernel on any backend, as long as no copy is forced).
VIEWS = {"Broadcast", "Reshape", "Slice", "Transpose", "Squeeze", "Flatten", "Unflatten", "ExpandDims", "AsStrided"}


def primitives(*outputs) -> Counter:
    """Nodes per primitive; under the key `concatenated` (not a primitive) the number of inputs of all
    Concatenates, which is how many copy kernels they launch on a GPU (one per piece; on the CPU one op)."""
    dot = io.StringIO()
    mx.export_to_dot(dot, *outputs)
    text = dot.getvalue()
    counts = Counter(re.findall(r'label ="([A-Za-z_]+)"', text))
    concats = set(re.findall(r'(\d+) \[label ="Concatenate"', text))
    pieces = sum(1 for node in re.findall(r'"\w+" -> (\d+)', text) if node in concats)
    if pieces:
        counts["concatenated"] = pieces
    return counts


def thin_7b():
    from ppchat.models.lm import LMConfig

    c = LMConfig.personaplex_7b()
    return dataclasses.replace(c, dim=256, num_heads=4, hidden=512, depformer_dim=128, depformer_num_heads=2,
                               depformer_hidden=256)


def _capture_temporal(step) -> list:
    """Record the outputs of every temporal-transformer graph `step` (an `LMStep`) runs."""
    outputs = []
    graphs = step._graphs

    def recording(*args):
        temporal, depformer = graphs(*args)

        def run(*a):
            outputs.append(temporal(*a))
            return outputs[-1]

        return run, depformer

    step._graphs = recording
    return outputs


def count(compiled: bool, conversations: int, quantize: int | None = None) -> dict:
    from ppchat.engine.bench import _input_frames, _voice_prompt, build_random_model
    from ppchat.engine.pipeline import ModelPipeline
    from ppchat.models.mimi import MimiConfig
    from ppchat.sampling import Sampling

    mx.set_default_device(mx.cpu)
    model = build_random_model(thin_7b(), MimiConfig.personaplex(), quantize, dtype=mx.bfloat16,
                               compile_streaming=compiled)
    voice = _voice_prompt(model.lm, 8, 0)
    frames = _input_frames(model.mimi.frame_size, model.mimi.sample_rate, 4, 0)
    if conversations:
        from ppchat.engine.batch import BatchPipeline

        batch = BatchPipeline(model, conversations, Sampling(seed=0), compile=compiled)
        for row in range(conversations):
            batch.join(voice, "assistant", seed=row)
        pcm = mx.array(np.stack([frames[0]] * conversations)[:, None, :])
        mimi, lm = batch.mimi, batch.lm
        for _ in range(2):  # warm (traces compiled graphs)
            batch.run_frame({row: frames[0] for row in range(conversations)})
        codes = mimi.encode_step(pcm)
        encode = primitives(codes, *mimi.streaming_state())
        mx.eval(codes, mimi.streaming_state())  # each phase is counted on its own
        live = lm.step_live(codes[:, :, 0])
        step = primitives(live.agent_codes, *live.arrays)
        mx.eval(live.agent_codes, live.arrays)
        audio = mimi.decode_step(live.agent_codes[:, :, None])
    else:
        pipeline = ModelPipeline(model, Sampling(seed=0), phase_timing=False)
        if compiled:
            pipeline.gen.compile = True
        pipeline.start(voice, "assistant")
        for _ in range(2):
            pipeline.run_frame(frames[0])
        mimi, gen = pipeline.mimi, pipeline.gen
        temporal_outputs = _capture_temporal(gen._step)
        codes = mimi.encode_step(mx.array(frames[0]).reshape(1, 1, -1))
        encode = primitives(codes, *mimi.streaming_state())
        mx.eval(codes, mimi.streaming_state())  # each phase is counted on its own
        live = gen.step_live(codes[0, :, 0])
        step = primitives(live.agent_codes, *live.arrays)
        # The step's graph holds the temporal transformer's (what a live step evaluates of it: not the
        # float32 text logits, which only a trace reads); the rest is the depformer's.
        h, _, text_sampled, text_in, state = temporal_outputs[-1]
        temporal = primitives(h, text_sampled, text_in, *state)
        split = {"temporal": temporal, "depformer": step - temporal}
        mx.eval(live.agent_codes, live.arrays)
        audio = mimi.decode_step(live.agent_codes.reshape(1, -1, 1))
    decode = primitives(audio, *mimi.streaming_state())
    mx.eval(audio, mimi.streaming_state())
    live.result()
    whole = encode + step + decode
    phases = {"encode": encode, "lm_step": step, "decode": decode, "frame": whole}
    if not conversations:
        phases.update(split)
    return {
        "compiled": compiled,
        "conversations": conversations,
        "quantize": quantize,
        "ops": {name: sum(v for k, v in c.items() if k != "concatenated") for name, c in phases.items()},
        "ops_not_views": {name: sum(v for k, v in c.items() if k not in VIEWS and k != "concatenated")
                          for name, c in phases.items()},
        "concatenated_pieces": {name: c["concatenated"] for name, c in phases.items()},
        "by_primitive": {k: v for k, v in whole.most_common() if k != "concatenated"},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiled", action="store_true", help="count through the mx.compile'd step graphs")
    parser.add_argument("--conversations", type=int, default=0, help="count a batched frame of N conversations")
    parser.add_argument("--quantize", type=int, choices=(4, 8), help="quantise the LM as `ppchat bench --quantize` does")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = count(args.compiled, args.conversations, args.quantize)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    top = ", ".join(f"{k} {v}" for k, v in list(result["by_primitive"].items())[:12])
    for key, label in (("ops", "all ops"), ("ops_not_views", "ops that are not views")):
        o = result[key]
        split = f": temporal {o['temporal']}, depformer {o['depformer']}" if "temporal" in o else ""
        print(f"{label}: frame {o['frame']} (encode {o['encode']}, LM step {o['lm_step']}{split}, decode {o['decode']})")
    c = result["concatenated_pieces"]
    print(f"concatenated pieces (a copy kernel each on a GPU): frame {c['frame']} (encode {c['encode']}, "
          f"LM step {c['lm_step']}, decode {c['decode']})")
    print(f"compiled={args.compiled} conversations={args.conversations} quantize={args.quantize}\n{top}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
