"""What a batch of B conversations costs the LM's projections: MLX's mat-vec/mat-mat time for B rows.

For each of the temporal transformer's four projection shapes, 16 different weight matrices (more
than the GPU's cache holds) are applied in one evaluation to B rows, in bf16, q8 (group 64) and q4
(group 32); the median over repeats gives µs per projection call, and the bytes of weights read over
that time the achieved bandwidth. B = 1 is the single-stream step; B = 8 is eight conversations.

    python3 benchmarks/batch_matmul.py OUT.json
"""

from __future__ import annotations

import json
import sys
import time

import mlx.core as mx

SHAPES = {"in_proj": (4096, 12288), "ffn_in": (4096, 22528), "ffn_out": (11264, 4096), "out_proj": (4096, 4096)}
ROWS = (1, 2, 4, 8)
MATRICES = 16


def weights(n_in: int, n_out: int, kind: str) -> list:
    out = []
    for i in range(MATRICES):
        w = (mx.random.normal((n_out, n_in), key=mx.random.key(i)) * n_in**-0.5).astype(mx.bfloat16)
        if kind == "bf16":
            out.append((w,))
        else:
            bits, group = (4, 32) if kind == "q4" else (8, 64)
            out.append((*mx.quantize(w, group_size=group, bits=bits), group, bits))
        mx.eval(out[-1][:3] if kind != "bf16" else out[-1])
    return out


def apply(x: mx.array, w) -> mx.array:
    if len(w) == 1:
        return x @ w[0].T
    q, scales, biases, group, bits = w
    return mx.quantized_matmul(x, q, scales, biases, transpose=True, group_size=group, bits=bits)


def main(argv: list[str]) -> int:
    results = []
    for name, (n_in, n_out) in SHAPES.items():
        for kind in ("bf16", "q8", "q4"):
            ws = weights(n_in, n_out, kind)
            nbytes = sum(a.nbytes for w in ws for a in w[:3] if isinstance(a, mx.array))
            for rows in ROWS:
                xs = [mx.random.normal((rows, n_in), key=mx.random.key(100 + i)).astype(mx.bfloat16) for i in range(4)]
                mx.eval(xs)

                def once(x):
                    return [apply(x, w) for w in ws]

                for i in range(3):
                    mx.eval(once(xs[i % 4]))
                times = []
                for i in range(20):
                    t = time.perf_counter()
                    mx.eval(once(xs[i % 4]))
                    times.append(time.perf_counter() - t)
                times.sort()
                per_call_us = times[len(times) // 2] / MATRICES * 1e6
                results.append({"shape": name, "kind": kind, "rows": rows, "us_per_call": per_call_us,
                                "weight_gb_per_s": nbytes / MATRICES / (per_call_us * 1e-6) / 1e9})
                print(f"{name:<9} {kind:<5} B={rows}  {per_call_us:8.1f} µs  {results[-1]['weight_gb_per_s']:7.0f} GB/s",
                      flush=True)
    if argv:
        with open(argv[0], "w") as f:
            json.dump({"device": str(mx.default_device()), "mlx_version": mx.__version__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
