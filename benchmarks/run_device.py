"""Run `ppchat bench` configurations on a machine where ppchat is not installed (the lent GPU).

The repository's folders become the `ppchat` packages here (as pyproject's package-dir maps them),
so only mlx, numpy, safetensors, sentencepiece and huggingface_hub are needed. Each configuration
runs in its own process (clean peak-memory figures) and writes `<name>.json` into the output folder;
a summary table is printed last.

    python3 benchmarks/run_device.py OUT_DIR NAME:ARGS [NAME:ARGS ...]
    e.g. python3 benchmarks/run_device.py /tmp/out "q4:--config 7b --quantize 4 --frames 2000"
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ppchat": "app", "ppchat.models": "models", "ppchat.engine": "engine"}


def install_namespace() -> None:
    """Make `import ppchat.x` resolve to the repository folders, as the editable install does."""
    for name, folder in PACKAGES.items():
        spec = importlib.util.spec_from_file_location(
            name, ROOT / folder / "__init__.py", submodule_search_locations=[str(ROOT / folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def run_one(out: Path, name: str, args: list[str]) -> None:
    install_namespace()
    import argparse

    from ppchat.commands import bench as bench_command

    parser = argparse.ArgumentParser(prog="ppchat")
    bench_command.register(parser.add_subparsers())
    options = parser.parse_args(["bench", *args, "--json"])
    result, report = bench_command.run_options(bench_command.bench_options(options))
    result["command"] = "ppchat bench " + " ".join(args)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(report, flush=True)


def summary(out: Path, names: list[str]) -> None:
    print(f"\n{'run':<14}{'median':>8}{'p95':>8}{'p99':>8}{'max':>8}{'prefill s':>10}{'peak GiB':>9}{'growth MiB':>11}")
    for name in names:
        path = out / f"{name}.json"
        if not path.exists():
            print(f"{name:<14} (failed)")
            continue
        r = json.loads(path.read_text())
        t, m = r["timings_ms"]["total"], r["memory"]
        prefill = r["prefill"]["seconds"] if "prefill" in r else r["joins"]["cold_seconds"]
        print(f"{name:<14}{t['median']:8.2f}{t['p95']:8.2f}{t['p99']:8.2f}{t['max']:8.2f}"
              f"{prefill:10.3f}{m['peak_bytes'] / 2**30:9.2f}{m['active_growth_bytes'] / 2**20:11.2f}"
              f"  late {r['late_frames']}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        run_one(Path(argv[1]), argv[2], argv[3:])
        return 0
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for item in argv[1:]:
        name, _, args = item.partition(":")
        names.append(name)
        print(f"=== {name}: ppchat bench {args}", flush=True)
        subprocess.run([sys.executable, __file__, "--one", str(out), name, *args.split()], check=False)
    summary(out, names)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
