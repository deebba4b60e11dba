"""Export the 7B preset (deterministic stand-in weights) to ONNX fp16 on this machine and report
wall time, peak RSS and artifact sizes. Needs ~30 GB of free disk; the artifacts are deleted after.

    python bench/export_7b.py [--components transformer_prefix,transformer_step] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--components", help="comma-separated subset (default: all)")
    parser.add_argument("--keep", help="keep the artifacts at this path instead of deleting them")
    args = parser.parse_args()

    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qiedge-7b-")) / "art"
    command = [
        sys.executable,
        "-m",
        "qiedge.cli",
        "export",
        "--preset",
        "qwen-image-2-7b",
        "--precision",
        args.precision,
        "--out",
        str(out),
    ]
    if args.components:
        command += ["--components", args.components]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    sizes = {
        p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e9 for p in out.iterdir() if p.is_dir()
    }
    print(
        table(
            ["what", "value"],
            [["wall time", f"{seconds:.0f} s"], ["peak RSS", f"{peak_gb:.2f} GB"]]
            + [[f"{name}/ size", f"{gb:.2f} GB"] for name, gb in sorted(sizes.items())],
        )
    )
    if not args.keep:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
