"""The 7B transformer or condition encoder (stand-in weights) exported to chunked Core ML
packages on this machine, one chunk's weights in memory at a time: chunk count, package sizes,
wall time and peak RSS per compression mode. Each mode runs in its own process, so its peak RSS
is its own.

    python bench/coreml_7b.py [--component transformer|condition_encoder] [--preset qwen-image-2-7b]
                              [--modes none,int8] [--size 1024x1024] [--prompt-length 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_header, table

# What each --component exports, and the manifest entry whose chunks are measured.
COMPONENTS = {
    "transformer": (["transformer_prefix", "transformer_step"], "transformer_step"),
    "condition_encoder": (["condition_encoder"], "condition_encoder"),
}


def export_one(component: str, preset: str, mode: str, size: str, prompt_length: int, out: Path) -> dict:
    """In this process: export, then report what the packages hold."""
    from qiedge.core.buckets import parse_sizes
    from qiedge.export.run import export_artifacts
    from qiedge.reference_model.presets import get_preset

    components, measured = COMPONENTS[component]
    start = time.perf_counter()
    manifest = export_artifacts(
        out,
        target="coreml",
        preset=get_preset(preset),
        components=components,
        target_options={
            "compute_units": "cpu_and_ne",
            "sizes": parse_sizes(size),
            "prompt_lengths": (prompt_length,),
            "compress": None if mode == "none" else mode,
        },
        on_component=lambda name, s: print(f"  {mode}: {name} in {s:.0f} s", file=sys.stderr, flush=True),
    )
    seconds = time.perf_counter() - start
    entry = manifest["components"][measured]
    packages = [c["graph"] for c in entry.get("chunks", [])] or [entry["graph"]]
    sizes = [sum(f.stat().st_size for f in (out / p).rglob("*") if f.is_file()) for p in packages]
    return {
        "mode": mode,
        "chunks": len(packages),
        "largest_chunk_mb": max(sizes) / 2**20,
        "total_gb": sum(sizes) / 2**30,
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--component", choices=COMPONENTS, default="transformer")
    parser.add_argument("--preset", default="qwen-image-2-7b")
    parser.add_argument(
        "--modes",
        help="none, int8, int4, palettize4, palettize6, mixed (default: none,int8 for the transformer; int8 for "
        "the encoder, whose fp16 token table fits no Neural Engine chunk)",
    )
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            result = export_one(args.component, args.preset, args.one, args.size, args.prompt_length, Path(tmp) / "art")
        print(json.dumps(result))
        return
    print(machine_header())
    rows = []
    for mode in (args.modes or ("none,int8" if args.component == "transformer" else "int8")).split(","):
        command = [sys.executable, __file__, "--one", mode, "--component", args.component, "--preset", args.preset]
        command += ["--size", args.size]
        done = subprocess.run(command + ["--prompt-length", str(args.prompt_length)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append([r["mode"], r["chunks"], r["largest_chunk_mb"], r["total_gb"], r["seconds"], r["peak_rss_gb"]])
        print(f"{mode}: done", file=sys.stderr, flush=True)
    what = "transformer (prefix + step)" if args.component == "transformer" else "condition encoder"
    print(f"\n{args.preset} {what}, {args.size}, {args.prompt_length}-token prompts, cpu_and_ne:")
    print(table(["compression", "chunks", "largest chunk MB", "total GB", "wall s", "peak RSS GB"], rows))


if __name__ == "__main__":
    main()
