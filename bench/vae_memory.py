"""Peak memory and time of the VAE decoder graph on ONNX Runtime's CPU provider, per image size,
whole or in tiles (runtime/tiled_vae.py), each run in its own process (peak RSS is a high-water
mark). Prints a table.

    python bench/vae_memory.py --preset qwen-image-2-7b --runs 1024:none,2048:1024,2048:512

The 7B preset's VAE has the released dimensions (stand-in weights: memory and time do not depend
on the values).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import CACHE, machine_header, table

CHILD = """
import json, resource, sys, time
import numpy as np
from qiedge.core.artifacts import Artifacts
from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
from qiedge.core.tiles import tiling_for
from qiedge.runtime.tiled_vae import TiledDecoder
art, size, arena, tile = Artifacts.open(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "on", sys.argv[4]
session = OnnxRuntimeBackend(art, arena=arena).load("vae_decoder")
if tile != "none":
    session = TiledDecoder(session, tiling_for(int(tile)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
channels = art.facts.latent_channels
latents = np.random.default_rng(0).standard_normal((1, channels, size // 16, size // 16), dtype=np.float32)
start = time.perf_counter()
image = session.run({"latents": latents})["image"]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_gb": peak / 2**20, "loaded_gb": before / 2**20, "shape": image.shape}))
"""


def main() -> None:
    from qiedge.export.run import export_artifacts
    from qiedge.reference_model import presets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="qwen-image-2-7b")
    parser.add_argument("--runs", default="1024:none,2048:1024,2048:512", help="size:tile px (none: whole)")
    parser.add_argument("--arena", default="on", help="ONNX Runtime's CPU memory arena: on, off or on,off")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    path = CACHE / f"{args.preset}-vae-decoder-fp32"
    if not (path / "manifest.json").is_file():
        export_artifacts(path, preset=presets.get_preset(args.preset), components=["vae_decoder"])
    rows = []
    for arena in args.arena.split(","):
        for run in args.runs.split(","):
            size, tile = run.split(":")
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), size, arena, tile], capture_output=True, text=True, check=True
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append([f"{size}x{size}", tile, arena, result["seconds"], result["loaded_gb"], result["peak_gb"]])
            print(rows[-1], flush=True)
    print(f"\n{args.preset} VAE decoder, fp32, ONNX Runtime CPU, one image\n")
    print(table(["size", "tile px", "arena", "seconds", "RSS loaded GB", "peak RSS GB"], rows))


if __name__ == "__main__":
    main()
